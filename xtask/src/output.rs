//! Console output that never panics.
//!
//! `println!` and `eprintln!` panic when the write fails, which is what happens after
//! `cargo xtask pipeline | tee log` and a Ctrl-C: the same SIGINT ends `tee` first, so stdout
//! is a pipe without a reader (EPIPE). A panic there would skip the cleanup that stops the
//! servers, so every line xtask prints goes through [`outln!`] or [`errln!`], which drop what
//! cannot be written: the logs and the data folders keep everything that matters.

use std::fmt;
use std::io::{self, Write};

/// Like `println!`, ignoring write errors.
macro_rules! outln {
    () => {{
        let _ = $crate::output::write_line(&mut ::std::io::stdout().lock(), format_args!(""));
    }};
    ($($arg:tt)*) => {{
        let _ = $crate::output::write_line(&mut ::std::io::stdout().lock(), format_args!($($arg)*));
    }};
}

/// Like `eprintln!`, ignoring write errors.
macro_rules! errln {
    ($($arg:tt)*) => {{
        let _ = $crate::output::write_line(&mut ::std::io::stderr().lock(), format_args!($($arg)*));
    }};
}

/// Writes one line and flushes it; returns whether that worked, for callers that care.
pub fn write_line(out: &mut impl Write, line: fmt::Arguments<'_>) -> bool {
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Whether `error` says the reader of our output went away.
pub fn is_closed_output(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader is gone.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_closed_pipe_is_reported_not_panicked_on() {
        assert!(!write_line(&mut ClosedPipe, format_args!("lost {}", 1)));
        let mut buffer = Vec::new();
        assert!(write_line(&mut buffer, format_args!("kept {}", 2)));
        assert_eq!(buffer, b"kept 2\n");
        assert!(is_closed_output(&io::Error::from(
            io::ErrorKind::BrokenPipe
        )));
    }
}
