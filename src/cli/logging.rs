//! Logging for the binary. By default stderr speaks with one voice, as cargo and ripgrep do:
//! `tidegate: warning: <file or receiver>: <what happened>: <why>`, one line per event, with no
//! timestamps and no `key=value` fields. `-v`/`-vv` (or `RUST_LOG`) switch to tracing's full
//! records for debugging; `-q` leaves only errors.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub(crate) fn init(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let from_env = EnvFilter::try_from_default_env().ok();
    let plain = verbose == 0 && from_env.is_none();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not into a log file or a CI log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // Another subscriber can only exist if something installed one before us; then keep it.
    let _ = if plain {
        builder.event_format(OneVoice).try_init()
    } else {
        builder.try_init()
    };
}

/// The default format: `tidegate: <level>: <subject>: <message>: <error>`.
struct OneVoice;

impl<S, N> FormatEvent<S, N> for OneVoice
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        writeln!(writer, "{}", line(*event.metadata().level(), &fields))
    }
}

/// The fields of an event that the one-voice line uses; the rest are for `-v`.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    /// What the event is about: a receiver's address or a path.
    subject: Option<String>,
    /// Why, appended after the message.
    error: Option<String>,
    /// Seconds an unreachable receiver is retried for: names the flag that changes it.
    retry_for_s: Option<u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = || format!("{value:?}");
        match field.name() {
            "message" if self.message.is_empty() => self.message = text(),
            "addr" | "path" if self.subject.is_none() => self.subject = Some(text()),
            "error" | "reason" if self.error.is_none() => self.error = Some(text()),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "retry_for_s" {
            self.retry_for_s = Some(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

fn line(level: Level, f: &Fields) -> String {
    let level = match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    };
    let mut out = format!("tidegate: {level}: ");
    if let Some(subject) = &f.subject {
        let _ = write!(out, "{subject}: ");
    }
    out.push_str(&f.message);
    if let Some(error) = &f.error {
        let _ = write!(out, " ({error})");
    }
    if let Some(secs) = f.retry_for_s {
        let _ = write!(out, "; retrying for {secs}s (`--retry-for`)");
    }
    // One event, one line, whatever the error text holds.
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_subject_first_and_its_cause_last() {
        let f = Fields {
            message: "cannot connect; is `tidegate serve` running there?".into(),
            subject: Some("127.0.0.1:1".into()),
            error: Some("connecting: Connection refused\n".into()),
            retry_for_s: Some(60),
        };
        assert_eq!(
            line(Level::WARN, &f),
            "tidegate: warning: 127.0.0.1:1: cannot connect; is `tidegate serve` running \
             there? (connecting: Connection refused ); retrying for 60s (`--retry-for`)"
        );
        let plain = Fields {
            message: "cannot read".into(),
            ..Fields::default()
        };
        assert_eq!(line(Level::ERROR, &plain), "tidegate: error: cannot read");
    }
}
