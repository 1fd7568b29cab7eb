//! `cargo xtask demo`: the main job, end to end, in the lab.
//!
//! Sets up what is missing, builds vfsdr, builds a lab site (network namespace on the lab LAN,
//! an XFS pool, a volume image formatted and mounted), starts the agent in the site's network
//! namespace watching the volume, starts a writer on the volume, and shows `vfsdr status` live.
//! Everything is torn down at the end (also on Ctrl-C or failure).
use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use vfsdr_lab::{GIB, Lab, agent::{Agent, write_config}, require_root};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// How long to show the live status.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    require_root()?;
    setup::run()?;
    util::run(util::cargo().args(["build", "--release", "-p", "vfsdr"]))?;
    let bin = util::root().join("target/release/vfsdr");
    // SAFETY: set before any thread of ours reads the environment.
    unsafe { std::env::set_var("VFSDR_BIN", &bin) };
    stop_on_ctrl_c();

    eprintln!("== lab: site-a with an XFS pool and a 1 GiB volume");
    let lab = Lab::new("demo")?;
    let site = lab.add_site("site-a")?;
    let vol = site.pool().create_volume("data", GIB)?;
    let config = write_config(
        &site,
        &format!("volumes:\n  - name: data\n    image: {}\n", vol.image().display()),
    )?;
    eprintln!("   site namespace {}, address {}", site.netns().name(), site.address());
    eprintln!("   volume image {} on {}, mounted at {}", vol.image().display(), vol.loop_device().display(), vol.mount_point().display());
    eprintln!("   config {}", config.display());

    eprintln!("== agent: {} agent --config {}", bin.display(), config.display());
    let agent = Agent::start(&site, &config)?;
    agent.changed("data", true)?;

    eprintln!("== writer: files of 64 KiB to 4 MiB, rewrites and deletes on the volume");
    let m = vol.mount_point().display().to_string();
    let script = format!(
        "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); \
         dd if=/dev/urandom of={m}/file$((i % 50)) bs=64k count=$((i % 64 + 1)) status=none; \
         [ $((i % 10)) -eq 0 ] && rm -f {m}/file$(((i + 25) % 50)); sleep 0.05; done"
    );
    let mut writer = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the writer")?;

    let until = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < until && !stopping() {
        thread::sleep(Duration::from_secs(1));
        print!("\x1b[H\x1b[2J");
        println!("vfsdr demo: live `vfsdr status` ({}s left, Ctrl-C ends)\n", until.saturating_duration_since(Instant::now()).as_secs());
        print!("{}", agent.cli(["status"])?);
    }
    // SAFETY: the writer is our child, signalled by its pid.
    unsafe { libc::kill(writer.id() as i32, libc::SIGTERM) };
    let _ = writer.wait();

    let taken = agent.changed("data", true)?;
    println!(
        "\nchanged since the demo started: {} blocks of 4 KiB in {} extents (mark taken and reset)",
        taken.blocks(),
        taken.ranges.len()
    );
    let exit = agent.stop()?;
    println!("agent stopped ({exit}); tearing the lab down");
    Ok(())
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn stop_on_ctrl_c() {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t) };
}

fn stopping() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}
