//! Serial devices: open the port, frame the byte stream, hand each frame to the buffer.
//! A port that is missing, busy or unplugged is retried with backoff, never fatal.

use std::io;
use std::time::Duration;

use edge_protocol::scale::mt_sics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use super::SourceContext;
use crate::backoff::Backoff;
use crate::buffer::WriterClosed;
use crate::config::{DecoderName, FlowControl, Parity, SerialSource};
use crate::normalize::Normalizer;
use crate::status::SourceState;

/// How often a scale source lets its settle rule see time pass.
const TICK: Duration = Duration::from_millis(100);

impl SerialSource {
    /// The running source: reads until shutdown.
    pub async fn build(self, ctx: SourceContext) {
        let mut norm = Normalizer::new(
            &ctx.config,
            &self.id,
            self.station.as_deref(),
            self.decoding(),
            ctx.correlator.clone(),
        );
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let why = match self.open() {
                Ok(port) => {
                    backoff.up();
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
            ctx.status.source_retrying(&self.id, why);
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
        // Scales: the settle rule's timeout, and a Toledo frame held for its checksum byte.
        let mut tick = tokio::time::interval(TICK);
        // MT-SICS answers only when asked: a stream once, or a poll every poll_interval.
        let mut poll = self
            .poll_interval
            .filter(|_| self.decoder == DecoderName::ScaleMtSics)
            .map(|p| tokio::time::interval(p.0));
        if self.decoder == DecoderName::ScaleMtSics && poll.is_none() {
            if let Err(e) = port.write_all(mt_sics::STREAM).await {
                return Some(self.write_failed(&e));
            }
        }
        loop {
            let n = tokio::select! {
                // Cancel-safe: AsyncRead::read either completes with data or reads nothing.
                r = port.read(&mut buf) => r,
                // Cancel-safe: interval ticks are not lost.
                _ = tick.tick(), if norm.needs_ticks() => {
                    framer.flush();
                    let mut out: Vec<_> = Vec::new();
                    while let Some(f) = framer.next_frame() {
                        out.push(f);
                    }
                    for f in out {
                        if self.deliver(norm, ctx, f).await.is_err() {
                            return None;
                        }
                    }
                    if let Some(reading) = norm.tick() {
                        if ctx.writer.append(reading).await.is_err() {
                            return None;
                        }
                    }
                    continue;
                }
                // Cancel-safe: interval ticks are not lost.
                _ = next_poll(&mut poll) => {
                    if let Err(e) = port.write_all(mt_sics::POLL).await {
                        return Some(self.write_failed(&e));
                    }
                    continue;
                }
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
                        if self.deliver(norm, ctx, frame).await.is_err() {
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

    /// Decodes one frame and queues what it yields.
    async fn deliver(
        &self,
        norm: &mut Normalizer,
        ctx: &SourceContext,
        frame: crate::normalize::framer::FrameResult,
    ) -> Result<(), WriterClosed> {
        let reading = match frame {
            Ok(f) => norm.frame(f),
            Err((raw, detail)) => Some(norm.damaged(raw, detail)),
        };
        let Some(reading) = reading else {
            return Ok(());
        };
        ctx.status.source_reading(&self.id, reading.observed_ms);
        ctx.writer.append(reading).await
    }

    fn write_failed(&self, e: &io::Error) -> String {
        format!(
            "serial port {} (source {}): writing to the scale failed: {e}; unplugged?",
            self.path.display(),
            self.id
        )
    }
}

/// The next MT-SICS poll, or never when the scale streams.
async fn next_poll(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending().await,
    }
}
