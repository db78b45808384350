//! Writing a command's output to stdout, where a reader that stops early
//! (`hetee plan | head`) is not an error.
//!
//! `println!` panics when stdout is a closed pipe. The commands whose
//! output is meant for pipes build it first and write it with [`emit`],
//! which reports a closed stdout as [`StdoutClosed`]; `main` then exits
//! quietly, as `cat` would.

use std::io::{ErrorKind, Write};

/// Stdout was closed by its reader before the output was written.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed before the output was written")]
pub struct StdoutClosed;

/// Writes `text` to stdout and flushes it.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `e` is a closed stdout (see [`emit`]).
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}
