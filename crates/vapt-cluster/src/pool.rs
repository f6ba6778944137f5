//! Worker processes on one node: each is a command line (in vapt's binary,
//! `vapt --device D sweep work DIR --plain`), started at once; their output lines come back
//! interleaved, each behind its worker's label, so that every worker has its own progress line.
//! Processes, not threads: Burn's random generator is process-wide, and a crashed worker must
//! not take the others down.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;

use crate::ClusterError;

/// One worker: a label for its lines and the command it runs.
#[derive(Debug)]
pub struct Worker {
    /// E.g. `cuda:1#2`.
    pub label: String,
    /// The command (stdout and stderr are captured).
    pub command: Command,
}

/// How one worker ended.
#[derive(Debug)]
pub struct WorkerEnd {
    /// Its label.
    pub label: String,
    /// Its exit status.
    pub status: ExitStatus,
}

/// Starts every worker, writes each output line to `out` as `[label] line` as it comes, and
/// waits for all of them.
pub fn run(workers: Vec<Worker>, out: &mut dyn Write) -> Result<Vec<WorkerEnd>, ClusterError> {
    let width = workers.iter().map(|w| w.label.len()).max().unwrap_or(0);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::new();
    for (i, mut w) in workers.into_iter().enumerate() {
        let program = w.command.get_program().to_owned();
        let mut child = w
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ClusterError::io(program, e))?;
        let streams: Vec<Box<dyn Read + Send>> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Progress redraws use `\r`; every redraw becomes its own line.
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    for part in line.split(|&b| b == b'\r').filter(|p| !p.is_empty()) {
                        if tx.send((i, String::from_utf8_lossy(part).into_owned())).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        children.push((w.label, child));
    }
    drop(tx);
    for (i, line) in rx {
        let _ = writeln!(out, "[{:<width$}] {line}", children[i].0);
    }
    let mut ends = Vec::new();
    for (label, mut child) in children {
        let status = child.wait().map_err(|e| ClusterError::io(&label, e))?;
        ends.push(WorkerEnd { label, status });
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn every_line_of_every_worker_comes_back_labelled() {
        let mk = |label: &str, script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            Worker {
                label: label.into(),
                command: c,
            }
        };
        let mut out = Vec::new();
        let ends = run(
            vec![
                mk("a", "echo one; echo two >&2"),
                mk("bb", "printf 'x\\ry\\n'; exit 3"),
            ],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines, ["[a ] one", "[a ] two", "[bb] x", "[bb] y"]);
        assert!(ends[0].status.success());
        assert_eq!(ends[1].status.code(), Some(3));
    }
}
