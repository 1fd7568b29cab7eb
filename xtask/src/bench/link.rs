//! Traffic over the lab link between the two sites: threads inside a site's network namespace,
//! the bytes an interface carried, the raw copy of changed ranges (the physical floor), a TCP
//! pipe for `btrfs send | btrfs receive`, and rsync (daemon at the DR site, client at the active
//! site).
use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use vfsdr_lab::{Daemon, Site};

/// Runs `f` on a new thread that has entered the network namespace `ns` (only that one).
pub fn spawn_in<T: Send + 'static>(
    ns: PathBuf,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> JoinHandle<anyhow::Result<T>> {
    thread::spawn(move || {
        let file = File::open(&ns).with_context(|| format!("cannot open {}", ns.display()))?;
        // SAFETY: setns on this thread with a valid network namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", ns.display()));
        }
        f()
    })
}

fn join<T>(h: JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("{what} thread panicked"))?
}

/// Bytes received + sent by the site's `eth0` so far (from `/proc/net/dev` inside its namespace).
pub fn eth0_bytes(site: &Site) -> anyhow::Result<u64> {
    let text = site.run("cat", ["/proc/net/dev"])?;
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("eth0:"))
        .context("no eth0 in the site's /proc/net/dev")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(f.len() >= 9, "bad /proc/net/dev line: {line}");
    Ok(f[0] + f[8])
}

/// Listens on `addr` in namespace `ns`, accepts one connection and hands it to `f`; returns
/// when the listener is bound, with the handle of the thread.
fn serve_once<T: Send + 'static>(
    ns: PathBuf,
    addr: SocketAddr,
    f: impl FnOnce(TcpStream) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
    let (ready, bound) = mpsc::channel();
    let h = spawn_in(ns, move || {
        let l = TcpListener::bind(addr);
        let _ = ready.send(l.as_ref().map(drop).map_err(|e| e.to_string()));
        let (s, _) = l
            .with_context(|| format!("cannot listen on {addr}"))?
            .accept()?;
        f(s)
    });
    match bound.recv() {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => bail!("cannot listen on {addr}: {e}"),
        Err(_) => Err(join(h, "listener")
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("listener gone"))),
    }
}

/// The physical floor: sends exactly `ranges` of `src` (at the active site, namespace `from`) to
/// a receiver at the DR site (namespace `to`, address `to_addr`) that pwrites them into `dst` and
/// fsyncs it, then acknowledges. Plain TCP, no compression, one stream. Returns the time from
/// connect to the acknowledgement, and the payload bytes.
pub fn raw_copy(
    from: PathBuf,
    to: PathBuf,
    to_addr: Ipv4Addr,
    src: &Path,
    ranges: Vec<(u64, u64)>,
    dst: &Path,
) -> anyhow::Result<(Duration, u64)> {
    let addr = SocketAddr::from((to_addr, 8731));
    let dst = dst.to_path_buf();
    let receiver = serve_once(to, addr, move |mut s| {
        let f = OpenOptions::new()
            .write(true)
            .open(&dst)
            .with_context(|| format!("cannot open {}", dst.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut head = [0u8; 16];
            s.read_exact(&mut head)?;
            let off = u64::from_le_bytes(head[..8].try_into()?);
            let len = u64::from_le_bytes(head[8..].try_into()?);
            if off == u64::MAX {
                break;
            }
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                s.read_exact(&mut buf[..n])?;
                f.write_all_at(&buf[..n], off + done)?;
                done += n as u64;
            }
        }
        f.sync_all()?;
        s.write_all(&[1])?;
        Ok(())
    })?;
    let src = src.to_path_buf();
    let sender = spawn_in(from, move || {
        let f = File::open(&src).with_context(|| format!("cannot open {}", src.display()))?;
        let start = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0;
        for (start_off, end) in ranges {
            s.write_all(&start_off.to_le_bytes())?;
            s.write_all(&(end - start_off).to_le_bytes())?;
            let mut off = start_off;
            while off < end {
                let n = (end - off).min(buf.len() as u64) as usize;
                f.read_exact_at(&mut buf[..n], off)?;
                s.write_all(&buf[..n])?;
                off += n as u64;
                sent += n as u64;
            }
        }
        s.write_all(&u64::MAX.to_le_bytes())?;
        s.write_all(&0u64.to_le_bytes())?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        Ok((start.elapsed(), sent))
    });
    let r = join(sender, "raw sender");
    join(receiver, "raw receiver")?;
    r
}

/// Copies `input` (at the active site) to `output` (at the DR site) over one TCP connection
/// between the sites' namespaces; returns the bytes carried.
pub fn pipe(
    from: PathBuf,
    to: PathBuf,
    to_addr: Ipv4Addr,
    mut input: impl Read + Send + 'static,
    mut output: impl Write + Send + 'static,
) -> anyhow::Result<u64> {
    let addr = SocketAddr::from((to_addr, 8732));
    let receiver = serve_once(to, addr, move |mut s| {
        let n = std::io::copy(&mut s, &mut output)?;
        output.flush()?;
        Ok(n)
    })?;
    let sender = spawn_in(from, move || {
        let mut s = TcpStream::connect(addr)?;
        let n = std::io::copy(&mut input, &mut s)?;
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(n)
    });
    let sent = join(sender, "pipe sender")?;
    let got = join(receiver, "pipe receiver")?;
    ensure!(sent == got, "the pipe sent {sent} bytes but {got} arrived");
    Ok(sent)
}

/// An rsync daemon at the DR site serving module `bench` (read-write) from `dir`.
pub struct RsyncDaemon {
    daemon: Option<Daemon>,
    url: String,
}

impl RsyncDaemon {
    pub fn start(site: &Site, dir: &Path) -> anyhow::Result<Self> {
        let conf = site.dir().join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = false\nuid = root\ngid = root\n[bench]\n  path = {}\n  read only = false\n",
                dir.display()
            ),
        )?;
        let log = File::create(site.dir().join("rsyncd.log"))?;
        let mut cmd = site.command("rsync");
        cmd.args(["--daemon", "--no-detach", "--port", "8730", "--address"])
            .arg(site.address().to_string())
            .arg(format!("--config={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let daemon = site.spawn_command(cmd)?;
        let url = format!("rsync://{}:8730/bench", site.address());
        Ok(Self {
            daemon: Some(daemon),
            url,
        })
    }

    /// `rsync --inplace --no-whole-file --stats SRC rsync://DR/bench/NAME` from the active
    /// site's namespace; returns the time and rsync's own total of bytes sent + received.
    pub fn push(&self, client: &Site, src: &Path, name: &str) -> anyhow::Result<(Duration, u64)> {
        let dest = format!("{}/{name}", self.url);
        // The daemon may need a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = client.command("rsync").arg(&self.url).output()?;
            if out.status.success() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the rsync daemon does not answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            thread::sleep(Duration::from_millis(100));
        }
        super::drop_caches()?;
        let start = Instant::now();
        let out = client
            .command("rsync")
            .args(["--inplace", "--no-whole-file", "--stats"])
            .arg(src)
            .arg(&dest)
            .stdin(Stdio::null())
            .output()?;
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "rsync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stat = |key: &str| -> u64 {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().replace(',', ""))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
                .unwrap_or(0)
        };
        Ok((
            took,
            stat("Total bytes sent:") + stat("Total bytes received:"),
        ))
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.stop();
        }
    }
}

/// Runs a command to completion, failing with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", crate::util::show(cmd)))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        crate::util::show(cmd),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
