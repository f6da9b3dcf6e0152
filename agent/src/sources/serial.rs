//! Serial devices: open the port, frame the byte stream, hand each frame to the buffer.
//! A port that is missing, busy or unplugged is retried with backoff, never fatal.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use super::SourceContext;
use crate::backoff::Backoff;
use crate::buffer::{Reading, WriterClosed};
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
            &self.decoder,
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
        let mut buf = vec![0u8; 4096];
        // What waits on time in the decoder (a weight that does not settle, a frame held for
        // its checksum byte); a decoder that needs no ticks gets none.
        let mut tick = norm.tick_interval().map(tokio::time::interval);
        // What the device must be asked: once at open (a stream), or a poll every interval.
        let requests = norm.requests();
        let mut poll = requests
            .poll
            .map(|(ms, req)| (tokio::time::interval(Duration::from_millis(ms)), req));
        if let Some(req) = requests.on_open {
            if let Err(e) = port.write_all(req).await {
                return Some(self.write_failed(&e));
            }
        }
        loop {
            let n = tokio::select! {
                // Cancel-safe: AsyncRead::read either completes with data or reads nothing.
                r = port.read(&mut buf) => r,
                // Cancel-safe: interval ticks are not lost.
                _ = next_tick(&mut tick) => {
                    let readings = norm.tick();
                    if self.deliver(ctx, readings).await.is_err() {
                        return None;
                    }
                    continue;
                }
                // Cancel-safe: interval ticks are not lost.
                req = next_poll(&mut poll) => {
                    if let Err(e) = port.write_all(req).await {
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
                    let readings = norm.push(&buf[..n]);
                    if self.deliver(ctx, readings).await.is_err() {
                        return None;
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

    /// Queues what the decoder made of the bytes.
    async fn deliver(
        &self,
        ctx: &SourceContext,
        readings: Vec<Reading>,
    ) -> Result<(), WriterClosed> {
        for reading in readings {
            ctx.status.source_reading(&self.id, reading.observed_ms);
            ctx.writer.append(reading).await?;
        }
        Ok(())
    }

    fn write_failed(&self, e: &io::Error) -> String {
        format!(
            "serial port {} (source {}): writing to the scale failed: {e}; unplugged?",
            self.path.display(),
            self.id
        )
    }
}

/// The next poll request, or never when the device streams by itself.
async fn next_poll(poll: &mut Option<(tokio::time::Interval, &'static [u8])>) -> &'static [u8] {
    match poll {
        Some((p, req)) => {
            p.tick().await;
            req
        }
        None => std::future::pending().await,
    }
}

/// The next tick, or never for a decoder that needs none.
async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
