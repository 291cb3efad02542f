//! OpenH264 prints its log lines to stderr unless told otherwise; nijigen routes them to
//! `tracing` (debug). The C library writes to file descriptor 2 directly, past the test
//! harness's capture, so the MP4 is written in a child process (this test binary, re-run on
//! [`child_writes_an_mp4`] alone) whose stderr is read whole.

use std::path::Path;
use std::process::Command;

use nijigen::media::video::{VideoMetadata, VideoOptions, VideoWriter};

/// Set (to an output folder) in the child process only.
const CHILD_ENV: &str = "NIJIGEN_TEST_MP4_STDERR_DIR";

#[test]
fn mp4_encoding_writes_nothing_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writes_an_mp4",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        dir.path().join("clip.mp4").is_file(),
        "the child wrote no MP4\nstdout:\n{stdout}"
    );
    assert!(
        stderr.trim().is_empty(),
        "writing an MP4 printed to stderr:\n{stderr}"
    );
    // What OpenH264 says while it initialises comes through `tracing` instead.
    assert!(
        stdout.contains("OpenH264"),
        "no OpenH264 line reached tracing\nstdout:\n{stdout}"
    );
}

/// The child's part: does nothing unless [`CHILD_ENV`] is set.
#[test]
fn child_writes_an_mp4() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let (w, h) = (64u32, 48u32);
        let path = Path::new(&dir).join("clip.mp4");
        let mut writer = VideoWriter::create(
            &path,
            w,
            h,
            &VideoOptions::default(),
            &VideoMetadata::default(),
        )
        .unwrap();
        for t in 0..4u32 {
            let rgb: Vec<u8> = (0..w * h * 3)
                .map(|i| ((i * 7 + t * 13) % 251) as u8)
                .collect();
            writer.push_frame(&rgb).unwrap();
        }
        writer.finish().unwrap();
    });
}
