//! `cargo xtask demo`: the main job, end to end, in the lab.
//!
//! Sets up what is missing, builds vfsdr, builds a lab of two sites (network namespaces on the lab
//! LAN, each with an XFS pool and a mount root), starts an agent in each site's network namespace
//! with a peer link between them (site-a's agent creates, formats and mounts fs1's volume),
//! starts a writer on that volume and shows `vfsdr status` live; then replicates fs1 to site-b
//! (a full copy, then an incremental cycle), lists the DR snapshots and verifies the latest;
//! asks for the DR precheck of VFS fs1, reserves its resources at site-b (its mount holds the
//! latest snapshot), shows them, and releases them.
//! Everything is torn down at the end (also on Ctrl-C or failure).
use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use vfsdr_lab::{
    Lab,
    agent::{Agent, make_certs, mount_root, resources, write_config_with_peers},
    require_root,
};

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

    eprintln!("== lab: site-a (active) and site-b (its DR site), each with an XFS pool");
    let lab = Lab::new("demo")?;
    let site = lab.add_site("site-a")?;
    let dr = lab.add_site("site-b")?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    // VFS volumes are mounted under each site's mount root (fs1's mount is `fs1/data`).
    let (root, dr_root) = (mount_root(&site)?, mount_root(&dr)?);
    let mount = root.path().join("fs1/data");
    let dr_mount = dr_root.path().join("fs1/data");
    // The body goes on with the `tracking:` section: per-process write counts are off by
    // default; the demo shows them.
    let config = write_config_with_peers(
        &site,
        &certs,
        &[&dr],
        &format!(
            "  writers: true\n{}vfs:\n  - name: fs1\n    \
             volumes:\n      - {{name: data, size: 1GiB}}\n    interfaces:\n      - {{name: smb0, address: 198.18.0.100/24, network: lan}}\n    \
             smb:\n      netbios_name: FS1\n      shares:\n        - {{name: data, volume: data}}\n    replication:\n      peer: site-b\n      interval: 60s\n",
            resources(&site, root.path(), ""),
        ),
    )?;
    let dr_config = write_config_with_peers(
        &dr,
        &certs,
        &[&site],
        &resources(
            &dr,
            dr_root.path(),
            "  links:\n    - {name: eth0, networks: [lan]}\n",
        ),
    )?;
    eprintln!(
        "   site-a namespace {}, address {}",
        site.netns().name(),
        site.address()
    );
    eprintln!(
        "   fs1's volume: image {} (made by the agent), mounted at {}",
        site.pool()
            .mount_point()
            .join("volumes/fs1/data.img")
            .display(),
        mount.display()
    );
    eprintln!(
        "   site-b namespace {}, address {}, replicas and snapshots under {}",
        dr.netns().name(),
        dr.address(),
        dr.pool().mount_point().display()
    );
    eprintln!(
        "   configs {} and {}",
        config.display(),
        dr_config.display()
    );

    eprintln!(
        "== agents: {} agent --config ... in each site's network namespace",
        bin.display()
    );
    let dr_agent = Agent::start(&dr, &dr_config)?;
    let agent = Agent::start(&site, &config)?;
    agent.changed("fs1/data", true)?;

    eprintln!("== writer: files of 64 KiB to 4 MiB, rewrites and deletes on the volume");
    let m = mount.display().to_string();
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
        println!(
            "vfsdr demo: live `vfsdr status` ({}s left, Ctrl-C ends)\n",
            until.saturating_duration_since(Instant::now()).as_secs()
        );
        print!("{}", agent.cli(["status"])?);
    }
    // SAFETY: the writer is our child, signalled by its pid.
    unsafe { libc::kill(writer.id() as i32, libc::SIGTERM) };
    let _ = writer.wait();

    let taken = agent.changed("fs1/data", true)?;
    println!(
        "\nchanged since the demo started: {} blocks of 4 KiB in {} extents (mark taken and reset)",
        taken.blocks(),
        taken.ranges.len()
    );

    println!("\n== replication of fs1 from site-a to site-b");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dr_agent.cli(["vfs"])?.contains("fs1") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "site-b never received fs1's definition"
        );
        thread::sleep(Duration::from_millis(200));
    }
    replicate(&agent)?;
    std::fs::write(
        mount.join("hello.txt"),
        "written at site-a after the first cycle\n",
    )?;
    replicate(&agent)?;
    print!(
        "$ vfsdr snapshots fs1   (at site-b)\n{}",
        dr_agent.cli(["snapshots", "fs1"])?
    );
    let (_, out, err) = agent.cli_status(&["verify", "fs1"])?;
    print!("$ vfsdr verify fs1   (at site-a)\n{out}{err}");

    println!(
        "\n== DR resources of VFS fs1, asked at site-a, answered by site-b over the peer link"
    );
    print!("$ vfsdr vfs   (at site-b)\n{}", dr_agent.cli(["vfs"])?);
    for args in [["precheck", "fs1"], ["reserve", "fs1"]] {
        let (_, out, err) = agent.cli_status(&args)?;
        print!("$ vfsdr {}   (at site-a)\n{out}{err}", args.join(" "));
    }
    print!(
        "$ cat {}/hello.txt   (site-b's reserved mount: the latest snapshot, read-only)\n{}",
        dr_mount.display(),
        std::fs::read_to_string(dr_mount.join("hello.txt"))
            .unwrap_or_else(|e| format!("cannot read it: {e}\n"))
    );
    print!(
        "$ ip -br -d link show fs1-0   (in site-b)\n{}",
        dr.run("ip", ["-br", "-d", "link", "show", "fs1-0"])?
    );
    print!("$ vfsdr vfs   (at site-b)\n{}", dr_agent.cli(["vfs"])?);
    print!(
        "$ vfsdr release fs1   (at site-a)\n{}",
        agent.cli(["release", "fs1"])?
    );

    let exit = agent.stop()?;
    let dr_exit = dr_agent.stop()?;
    println!("\nagents stopped ({exit}, {dr_exit}); tearing the lab down");
    Ok(())
}

/// `vfsdr replicate fs1 --now` at site-a, printed; waits for a scheduled cycle in flight.
fn replicate(agent: &Agent) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, out, err) = agent.cli_status(&["replicate", "fs1", "--now"])?;
        if code == 0 {
            print!("$ vfsdr replicate fs1 --now   (at site-a)\n{out}");
            return Ok(());
        }
        anyhow::ensure!(
            err.contains("already running") && Instant::now() < deadline,
            "vfsdr replicate fs1 --now failed: {}",
            err.trim()
        );
        thread::sleep(Duration::from_secs(1));
    }
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
