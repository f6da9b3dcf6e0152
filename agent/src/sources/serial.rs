//! Serial devices: open the port, frame the byte stream, hand each frame to the buffer.
//! A port that is missing, busy or unplugged is retried with backoff, never fatal.

use std::io;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use super::SourceContext;
use crate::backoff::Backoff;
use crate::config::{FlowControl, Parity, SerialSource};
use crate::normalize::Normalizer;
use crate::status::SourceState;

impl SerialSource {
    /// The running source: reads until shutdown.
    pub async fn build(self, ctx: SourceContext) {
        let mut norm = Normalizer::new(
            &ctx.config,
            &self.id,
            self.station.as_deref(),
            self.decoder,
            &self.no_read,
            self.max_frame,
        );
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let why = match self.open() {
                Ok(port) => {
                    backoff.reset();
                    ctx.status.set_source(
                        &self.id,
                        SourceState::Open,
                        format!("{} at {} baud", self.path.display(), self.baud),
                    );
                    tracing::info!(source = %self.id, "serial port {} open", self.path.display());
                    match self.read_until_closed(port, &mut norm, &ctx).await {
                        None => return,
                        Some(why) => why,
                    }
                }
                Err(e) => self.describe_open_error(&e),
            };
            let delay = backoff.next_delay();
            let first = ctx
                .status
                .sources()
                .get(&self.id)
                .map(|s| s.detail != why)
                .unwrap_or(true);
            if first {
                tracing::warn!(source = %self.id, "{why}; retrying");
            }
            ctx.status.set_source(&self.id, SourceState::Retrying, why);
            tokio::select! {
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep(delay) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
        }
    }

    fn open(&self) -> Result<SerialStream, tokio_serial::Error> {
        let path = self.path.to_string_lossy();
        tokio_serial::new(path.as_ref(), self.baud)
            .data_bits(match self.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(if self.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            })
            .flow_control(match self.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Software => tokio_serial::FlowControl::Software,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            })
            .open_native_async()
    }

    /// A sentence for the operator: the port, the source, the cause and the fix.
    fn describe_open_error(&self, e: &tokio_serial::Error) -> String {
        let what = format!("serial port {} (source {})", self.path.display(), self.id);
        let io_kind = match e.kind {
            tokio_serial::ErrorKind::Io(k) => Some(k),
            tokio_serial::ErrorKind::NoDevice => Some(io::ErrorKind::NotFound),
            _ => None,
        };
        match io_kind {
            Some(io::ErrorKind::NotFound) => format!(
                "{what}: not found; check the cable and the path (ls -l /dev/serial/by-id/)"
            ),
            Some(io::ErrorKind::PermissionDenied) => {
                format!("{what}: permission denied; add the service user to group dialout")
            }
            _ if e.description.contains("busy") || e.description.contains("Resource busy") => {
                format!(
                    "{what}: busy; another program has it open (fuser {})",
                    self.path.display()
                )
            }
            _ => format!("{what}: cannot open: {}", e.description),
        }
    }

    /// Reads until the port fails (returns why) or shutdown (returns None).
    async fn read_until_closed(
        &self,
        mut port: SerialStream,
        norm: &mut Normalizer,
        ctx: &SourceContext,
    ) -> Option<String> {
        let mut framer = norm.framer();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::select! {
                // Cancel-safe: AsyncRead::read either completes with data or reads nothing.
                r = port.read(&mut buf) => r,
                _ = ctx.shutdown.cancelled() => return None,
            };
            match n {
                Ok(0) => {
                    return Some(format!(
                        "serial port {} (source {}): closed by the device; unplugged?",
                        self.path.display(),
                        self.id
                    ))
                }
                Ok(n) => {
                    framer.push(&buf[..n]);
                    while let Some(frame) = framer.next_frame() {
                        let reading = norm.frame(frame);
                        ctx.status.source_reading(&self.id, reading.observed_ms);
                        if ctx.writer.append(reading).await.is_err() {
                            return None;
                        }
                    }
                }
                Err(e) => {
                    return Some(format!(
                        "serial port {} (source {}): read failed: {e}; unplugged?",
                        self.path.display(),
                        self.id
                    ))
                }
            }
        }
    }
}
