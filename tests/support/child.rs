//! The two halves of a test that re-runs its own binary as a child process: the child
//! reads commands from stdin without blocking its work, the parent reads the child's
//! tagged answers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
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
        // The test harness may have begun the line ("test name ... ") first.
        if let Some((_, rest)) = line.trim_end().split_once(tag) {
            return rest.to_owned();
        }
    }
}

/// Parent side: runs the ignored test `name` of this same binary as a child, with
/// piped stdin and stdout (the environment is inherited).
pub fn spawn_test(name: &str) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    spawn_test_with(name, &[])
}

/// [`spawn_test`] with more environment variables for the child.
pub fn spawn_test_with(name: &str, env: &[(&str, &str)]) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = child.stdin.take().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, input, out)
}

/// Bytes as lowercase hex, for a line of a child's answer.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of [`hex`]'s text.
pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
