//! The README's Quickstart `curl` walk-through, run as written against the real binary with
//! the checked-in dev config. Only the host:port is swapped for the test server's.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Process;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shell commands between the README's `readme-test` markers.
fn readme_script() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let begin = readme
        .find("<!-- readme-test: begin -->")
        .expect("begin marker");
    let end = readme
        .find("<!-- readme-test: end -->")
        .expect("end marker");
    let mut script = String::new();
    let mut in_code = false;
    for line in readme[begin..end].lines() {
        if line.starts_with("```") {
            in_code = line.trim() == "```sh";
            continue;
        }
        if in_code {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

#[test]
fn the_quickstart_walkthrough_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_root().join("config/dev.toml");
    let server = Process::serve(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--data-dir", "data"],
        &[],
    );
    let host = server.base.trim_start_matches("http://");
    let script = readme_script().replace("127.0.0.1:8080", host);
    assert!(script.contains("curl"), "the README lost its walkthrough");

    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash and curl are installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("latch_at_"), "token: {}", lines[0]);
    assert!(
        lines[1].starts_with(r#"{"active":true"#),
        "introspect: {}",
        lines[1]
    );
    assert_eq!(lines[2], "200", "revoke");
    assert_eq!(lines[3], r#"{"active":false}"#, "introspect after revoke");
    assert!(
        lines[4].contains(r#""refresh_token":"latch_rt_"#),
        "refresh: {}",
        lines[4]
    );
    assert!(
        lines[5].contains(r#""subject":"alice""#) && lines[5].contains("grant_id"),
        "grants: {}",
        lines[5]
    );
    let json = |line: &str| -> serde_json::Value { serde_json::from_str(line).expect(line) };
    assert_eq!(
        json(lines[6]),
        serde_json::json!({"subject": "alice", "revoked_grants": 1, "revoked_tokens": 3}),
        "logout everywhere"
    );
    assert_eq!(lines[7], "200", "seed 002 example 1");
    assert_eq!(lines[8], "200", "seed 002 example 2");
    assert_eq!(
        lines[9], r#"{"active":false}"#,
        "seed 002 refresh token revoked"
    );
    assert_eq!(lines[10].trim(), "2", "erin signed in to two applications");
    assert_eq!(lines[11], "200", "seed 000 revocation");
    assert_eq!(
        json(lines[12]),
        serde_json::json!({"subject": "erin", "grants": [], "next_before": null}),
        "erin logged out everywhere"
    );
    assert_eq!(lines.len(), 13, "{stdout}");
    assert!(
        dir.path().join("data/latch.db").exists(),
        "database in the data folder"
    );
}
