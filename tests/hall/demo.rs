//! `kaibiao demo` runs a whole opening, from sealing and binding the demo CA's certificates to
//! the confirmed record, and the record it ends with is what its public log folds to.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port free now on loopback (the demo takes its address on the command line).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo's process, stopped however the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn the_demo_runs_a_whole_opening_to_the_confirmed_record() {
    let bin = env!("CARGO_BIN_EXE_kaibiao");
    let port = free_port();
    let mut demo = Running(
        Command::new(bin)
            .args(["demo", "--bidders", "3", "--size", "1"])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    // Reads the demo's lines until it prints how to check the record (or gives up).
    let lines = actix_web::rt::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(300);
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("check it:") || line.contains("stopped");
            lines.push(line);
            if done || Instant::now() > until {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let text = lines.join("\n");
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        count("signed in to"),
        2,
        "all but the last sign in:\n{text}"
    );
    assert_eq!(
        count(": bound "),
        3,
        "each phone binds its CA certificates:\n{text}"
    );
    assert_eq!(count("scanned and answered"), 3, "{text}");
    assert_eq!(count("objection 1 recorded"), 1, "{text}");
    assert_eq!(count("confirmed version 1"), 3, "{text}");
    let check = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("check it:"))
        .unwrap_or_else(|| panic!("no check command:\n{text}"));
    // The command the demo prints re-derives its record from the log.
    let args: Vec<&str> = check.split_whitespace().skip(1).collect();
    let out = Command::new(bin).args(&args).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(demo);
    assert!(
        out.status.success() && said.contains("is what the opening's public log folds to"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
