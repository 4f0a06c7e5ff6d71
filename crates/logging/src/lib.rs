//! The logging setup of both rollcall binaries, `rollcall-registry` and `rollcall-sidecar`,
//! so that their logs read and parse alike.
//!
//! - Logs go to stderr: stdout belongs to the answers of one-shot commands.
//! - `ROLLCALL_LOG` is the filter (`tracing`'s `EnvFilter` syntax), `info` when unset or
//!   invalid.
//! - Text is coloured only for a person at a terminal: `docker logs` and log files get plain
//!   text, and `NO_COLOR` (<https://no-color.org>) turns colours off anywhere.
//! - JSON is one object a line with the event's message and fields at the top level
//!   (`timestamp`, `level`, `message`, the event's fields, `target`), and the spans the event
//!   is in under `span` (the innermost) and `spans` (all of them, outermost first).
//!
//! Each binary keeps its own `--log-format` flag (`ROLLCALL_LOG_FORMAT`) and maps it to
//! [`Format`].

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// The environment variable that holds the log filter.
pub const FILTER_VARIABLE: &str = "ROLLCALL_LOG";
/// The filter when `ROLLCALL_LOG` is unset or cannot be parsed.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the process's logger: `format` to stderr, filtered by `ROLLCALL_LOG`, with
/// colours only when stderr is a terminal and `NO_COLOR` is not set. Records of the `log`
/// crate (sled's, for one) go through the same logger. Call it once, early in `main`.
pub fn init(format: Format) {
    let filter =
        EnvFilter::try_from_env(FILTER_VARIABLE).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = use_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    subscriber(format, filter, ansi, std::io::stderr).init();
}

/// The logger [`init`] installs, writing to `writer`; tests capture its output with it.
pub fn subscriber<W>(
    format: Format,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        Format::Text => Box::new(builder.finish()),
        Format::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// Colour escape codes only for a person at a terminal: `docker logs` and log files get
/// plain text, and `NO_COLOR` set to anything but the empty string turns colours off
/// (<https://no-color.org>).
pub fn use_colours(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    let no_color_set = match no_color {
        Some(value) => !value.is_empty(),
        None => false,
    };
    stderr_is_terminal && !no_color_set
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        // (stderr is a terminal, NO_COLOR, colours)
        for (terminal, no_color, colours) in [
            (true, None, true),
            (true, empty, true),
            (true, set, false),
            (false, None, false),
            (false, empty, false),
            (false, set, false),
        ] {
            assert_eq!(
                use_colours(terminal, no_color),
                colours,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }

    /// A writer into a shared buffer, so that the test can read what was logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'writer> MakeWriter<'writer> for Captured {
        type Writer = Captured;
        fn make_writer(&'writer self) -> Captured {
            self.clone()
        }
    }

    fn log_lines(format: Format, filter: &str, emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let logger = subscriber(format, EnvFilter::new(filter), false, captured.clone());
        tracing::subscriber::with_default(logger, emit);
        let bytes = captured.0.lock().expect("buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Both binaries log through `subscriber`, so this is the shape of every JSON line
    /// either of them writes: message and fields at the top level, spans beside them.
    #[test]
    fn json_lines_carry_the_message_and_fields_at_the_top_level() {
        let lines = log_lines(Format::Json, "info", || {
            let span = tracing::info_span!("sidecar", node = "node-1", cluster = "default");
            let _entered = span.enter();
            tracing::info!(
                role = "bootstrap",
                n_expired = 2,
                "the registry granted a role"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("one JSON object");
        let mut keys: Vec<&str> = line
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "level",
                "message",
                "n_expired",
                "role",
                "span",
                "spans",
                "target",
                "timestamp"
            ]
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "the registry granted a role");
        assert_eq!(line["role"], "bootstrap");
        assert_eq!(line["n_expired"], 2);
        assert_eq!(line["span"]["name"], "sidecar");
        assert_eq!(line["span"]["node"], "node-1");
        assert_eq!(line["spans"][0]["cluster"], "default");
    }

    #[test]
    fn the_filter_decides_what_is_written_and_text_has_no_colours_when_told() {
        let lines = log_lines(Format::Text, "warn", || {
            tracing::info!("left out");
            tracing::warn!(node = "node-1", "kept");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
        assert!(lines[0].contains("kept node=\"node-1\""), "{}", lines[0]);
        assert!(
            !lines[0].contains('\u{1b}'),
            "no escape codes: {}",
            lines[0]
        );
    }
}
