//! The two halves of a test that re-runs its own binary as a child process: the child
//! reads commands from stdin without blocking its work, the parent reads the child's
//! tagged answers.

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;
use std::sync::mpsc::Receiver;

/// Child side: stdin's lines, delivered by a thread (so the child can poll).
pub fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Parent side: the rest of the child's next stdout line that starts with `tag`.
pub fn read_tagged(stdout: &mut BufReader<ChildStdout>, tag: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the target exited before printing {tag:?}"
        );
        if let Some(rest) = line.trim_end().strip_prefix(tag) {
            return rest.to_owned();
        }
    }
}
