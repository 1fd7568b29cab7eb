//! Root tests of the DR precheck and reservation between real sites in the lab: each site its
//! own namespace, agent, pool, mount root and config, joined by the lab bridge, talking over
//! the peer link. VFS mounts are relative: each active site mounts its volumes under its own
//! mount root, the DR site its reserved mounts under its own.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    Lab, Site,
    agent::{Agent, MountRoot, make_certs, mount_root, resources, write_config_with_peers},
    check::{sh, wait_for},
    require_root, service_address,
};

const MIB: u64 = 1 << 20;

/// A VFS item mounting its volume `data` at `mount` (relative: under each site's mount root).
fn vfs_yaml(name: &str, dr: &str, mount: &str, address_host: u8) -> String {
    format!(
        "  - name: {name}\n    volumes:\n      - name: data\n        size: 512MiB\n        mount: {}\n    \
         interfaces:\n      - name: smb0\n        address: {}/24\n        network: lan\n    \
         smb:\n      netbios_name: {}\n      shares:\n        - {{name: data, volume: data}}\n    \
         replication:\n      peer: {dr}\n      interval: 60s\n",
        mount,
        service_address(address_host),
        name.to_uppercase()
    )
}

/// The DR site's resources section.
fn dr_resources(site: &Site, root: &MountRoot, links: &str, reserve: &str) -> String {
    format!(
        "resources:\n  links:\n{links}  pool:\n    path: {}\n    reserve: {reserve}\n  mount_root: {}\n",
        site.pool().mount_point().display(),
        root.path().display()
    )
}

/// An active site's sections: its pool and mount root, and its VFSs.
fn active_body(site: &Site, root: &MountRoot, vfs: &str) -> String {
    format!("{}vfs:\n{vfs}", resources(site, root.path(), ""))
}

const ETH0_LAN: &str = "    - {name: eth0, networks: [lan]}\n";

/// A replica image for `vfs`/`volume` in the site's pool, formatted XFS.
fn make_replica(site: &Site, vfs: &str) -> anyhow::Result<PathBuf> {
    let dir = site.pool().mount_point().join("replicas").join(vfs);
    std::fs::create_dir_all(&dir)?;
    let image = dir.join("data.img");
    sh(&format!(
        "truncate -s {} '{p}' && mkfs.xfs -q '{p}'",
        512 * MIB,
        p = image.display()
    ))?;
    Ok(image)
}

/// Waits until `agent` lists `vfs` (received from its active site).
fn wait_definition(agent: &Agent, vfs: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("the definition of {vfs}"),
        Duration::from_secs(30),
        || {
            let list: Value = serde_json::from_str(&agent.cli(["vfs", "--json"])?)?;
            Ok(list
                .as_array()
                .is_some_and(|l| l.iter().any(|v| v["name"] == vfs)))
        },
    )
}

fn json(out: &str) -> anyhow::Result<Value> {
    serde_json::from_str(out).with_context(|| format!("not JSON: {out}"))
}

fn kinds(report: &Value) -> Vec<String> {
    report["discrepancies"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x["kind"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn reload(agent: &Agent, config: &Path, text: &str) -> anyhow::Result<()> {
    let before = agent.log_text().matches("config_reloaded").count();
    std::fs::write(config, text)?;
    // SAFETY: signals the agent this test started, by its pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_for("the reload", Duration::from_secs(30), || {
        let log = agent.log_text();
        ensure!(
            !log.contains("config_reload_failed"),
            "reload failed:\n{log}"
        );
        Ok(log.matches("config_reloaded").count() > before)
    })
}

/// Runs `vfsdr ARGS --socket S` on a pseudo-terminal (util-linux `script`) with `input` typed.
fn on_terminal(agent: &Agent, args: &str, input: &str) -> anyhow::Result<(i32, String)> {
    use std::io::Write as _;
    let cmd = format!(
        "{} {args} --socket {}",
        vfsdr_lab::agent::vfsdr_bin()?.display(),
        agent.socket().display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

struct TwoSites {
    a: Agent,
    b: Agent,
    b_config: PathBuf,
    /// fs1's reserved mount point at the DR site.
    mount: PathBuf,
    b_root: MountRoot,
    _a_root: MountRoot,
    site_b: Site,
    _site_a: Site,
    _lab: Lab,
}

/// Site a (active, VFS fs1) and site b (its DR site, with a replica of fs1's volume).
fn two_sites(test: &str) -> anyhow::Result<TwoSites> {
    require_root()?;
    let lab = Lab::new(test)?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    let (a_root, b_root) = (mount_root(&a)?, mount_root(&b)?);
    let mount = b_root.path().join("fs1/data");
    make_replica(&b, "fs1")?;
    let b_config =
        write_config_with_peers(&b, &certs, &[&a], &dr_resources(&b, &b_root, ETH0_LAN, "0"))?;
    let a_config = write_config_with_peers(
        &a,
        &certs,
        &[&b],
        &active_body(&a, &a_root, &vfs_yaml("fs1", "site-b", "fs1/data", 0)),
    )?;
    let agent_b = Agent::start(&b, &b_config)?;
    let agent_a = Agent::start(&a, &a_config)?;
    wait_definition(&agent_b, "fs1")?;
    Ok(TwoSites {
        a: agent_a,
        b: agent_b,
        b_config,
        mount,
        b_root,
        _a_root: a_root,
        site_b: b,
        _site_a: a,
        _lab: lab,
    })
}

fn mounted_at(target: &Path) -> anyhow::Result<Option<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(target.to_str().unwrap_or("")))
        .map(str::to_owned))
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_sufficient_dr_site_reserves_reconciles_and_releases() -> anyhow::Result<()> {
    let t = two_sites("res-sufficient")?;
    // Asked at the active site, answered by the DR site.
    let (code, out, err) = t.a.cli_status(&["precheck", "fs1", "--json"])?;
    ensure!(code == 0, "precheck exit {code}: {out}{err}");
    let report = json(&out)?;
    ensure!(
        report["sufficient"] == true && report["site"] == "site-b",
        "{report}"
    );

    // A proposed change adding an interface on a network the DR site does not carry.
    let change = t.b_config.with_file_name("fs1-change.yaml");
    let proposed = vfs_yaml("fs1", "site-b", "fs1/data", 0)
        .replace("        network: lan\n", "        network: lan\n      - name: smb1\n        address: 198.18.1.100/24\n        network: backup\n");
    // The file holds one definition, as an item of `vfs:` without the list dash.
    let proposed: String = proposed
        .lines()
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    std::fs::write(&change, proposed)?;
    let (code, out, err) = t.a.cli_status(&[
        "precheck",
        "fs1",
        "--for",
        "change",
        change.to_str().context("path")?,
        "--json",
    ])?;
    ensure!(code == 3, "precheck of the change: exit {code}: {out}{err}");
    let r = json(&out)?;
    ensure!(
        kinds(&r) == ["no_link_for_network"] && r["purpose"] == "change",
        "{r}"
    );

    let (code, out, err) = t.b.cli_status(&["reserve", "fs1", "--json"])?;
    ensure!(code == 0, "reserve exit {code}: {out}{err}");
    let outcome = json(&out)?;
    ensure!(outcome["reserved"] == true, "{outcome}");
    let link = t.site_b.run("ip", ["-d", "link", "show", "fs1-0"])?;
    ensure!(
        link.contains("macvlan") && link.contains("state DOWN") && link.contains("@eth0"),
        "{link}"
    );
    let m = mounted_at(&t.mount)?.context("the reserved mount point is not mounted")?;
    ensure!(m.contains(" xfs ro,") && m.contains("norecovery"), "{m}");
    let list = json(&t.b.cli(["vfs", "--json"])?)?;
    ensure!(
        list[0]["reservations"].as_array().map(Vec::len) == Some(2),
        "{list}"
    );

    // Again, from the active site: nothing changes.
    let again = json(&t.a.cli(["reserve", "fs1", "--json"])?)?;
    let actions: Vec<&str> = again["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| s["action"].as_str())
        .collect();
    ensure!(actions == ["present", "present"], "{again}");

    // A restart reconciles: a macvlan removed behind the agent's back is recreated.
    let b_site = &t.site_b;
    t.b.stop()?;
    b_site.run("ip", ["link", "del", "fs1-0"])?;
    let b = Agent::start(b_site, &t.b_config)?;
    ensure!(
        b.log_text().contains("reservation_recreated"),
        "{}",
        b.log_text()
    );
    ensure!(b_site.run("ip", ["link", "show", "fs1-0"]).is_ok());
    ensure!(
        mounted_at(&t.mount)?.is_some(),
        "the mount did not survive the restart"
    );

    let released = t.a.cli(["release", "fs1", "--json"])?;
    ensure!(released.matches("\"removed\"").count() == 3, "{released}");
    ensure!(
        b_site.run("ip", ["link", "show", "fs1-0"]).is_err(),
        "macvlan left behind"
    );
    ensure!(mounted_at(&t.mount)?.is_none(), "mount left behind");
    ensure!(!t.mount.exists(), "mount point directory left behind");
    let list = json(&b.cli(["vfs", "--json"])?)?;
    ensure!(
        list[0]["reservations"].as_array().map(Vec::len) == Some(0),
        "{list}"
    );
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn each_shortage_yields_exactly_its_discrepancy() -> anyhow::Result<()> {
    let t = two_sites("res-shortages")?;
    let b = &t.site_b;
    let precheck = |expect: &str| -> anyhow::Result<Value> {
        let (code, out, err) = t.b.cli_status(&["precheck", "fs1", "--json"])?;
        ensure!(
            code == 3,
            "precheck exit {code} (want 3, insufficient): {out}{err}"
        );
        let r = json(&out)?;
        ensure!(kinds(&r) == [expect], "want only {expect}: {r}");
        Ok(r)
    };
    let base = std::fs::read_to_string(&t.b_config)?;
    let root = &t.b_root;
    let with = |resources: String| base.replace(&dr_resources(b, root, ETH0_LAN, "0"), &resources);

    // The link the site names for the network does not exist.
    reload(
        &t.b,
        &t.b_config,
        &with(dr_resources(
            b,
            root,
            "    - {name: eth7, networks: [lan]}\n",
            "0",
        )),
    )?;
    let r = precheck("link_missing")?;
    ensure!(
        r["discrepancies"][0]["found"] == "eth7 does not exist",
        "{r}"
    );

    // It exists but is down.
    b.run(
        "ip",
        [
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
        ],
    )?;
    reload(
        &t.b,
        &t.b_config,
        &with(dr_resources(
            b,
            root,
            "    - {name: eth1, networks: [lan]}\n",
            "0",
        )),
    )?;
    precheck("link_down")?;

    // The address is already configured here.
    reload(&t.b, &t.b_config, &base)?;
    b.run("ip", ["addr", "add", "198.18.0.100/24", "dev", "eth0"])?;
    let r = precheck("address_in_use")?;
    ensure!(
        r["discrepancies"][0]["found"] == "198.18.0.100/24 is configured on eth0",
        "{r}"
    );
    b.run("ip", ["addr", "del", "198.18.0.100/24", "dev", "eth0"])?;

    // The pool is too small (its reserve takes more than there is).
    reload(
        &t.b,
        &t.b_config,
        &with(dr_resources(b, root, ETH0_LAN, "100TiB")),
    )?;
    let r = precheck("pool_too_small")?;
    ensure!(r["discrepancies"][0]["blocks_access"] == false, "{r}");

    // A foreign mount occupies the mount point.
    reload(&t.b, &t.b_config, &base)?;
    std::fs::create_dir_all(&t.mount)?;
    sh(&format!(
        "mount -t tmpfs vfsdr-test '{}'",
        t.mount.display()
    ))?;
    let r = precheck("mount_point_busy");
    sh(&format!("umount '{}'", t.mount.display()))?;
    let r = r?;
    ensure!(
        r["discrepancies"][0]["found"] == "tmpfs from vfsdr-test is mounted there",
        "{r}"
    );

    // Without a terminal and without --on-shortage, reserve aborts and reserves nothing;
    // with --on-shortage proceed it reserves what is there and records the shortage.
    reload(
        &t.b,
        &t.b_config,
        &with(dr_resources(
            b,
            root,
            "    - {name: eth7, networks: [lan]}\n",
            "0",
        )),
    )?;
    let (code, _, err) = t.b.cli_status(&["reserve", "fs1"])?;
    ensure!(code == 3 && err.contains("aborting"), "exit {code}: {err}");
    // On a terminal it asks; the operator terminates.
    let (code, out) = on_terminal(&t.b, "reserve fs1", "t\n")?;
    ensure!(
        code == 3 && out.contains("[t]erminate or [p]roceed"),
        "exit {code}: {out}"
    );
    ensure!(
        json(&t.b.cli(["vfs", "--json"])?)?[0]["reservations"]
            .as_array()
            .map(Vec::len)
            == Some(0)
    );
    let (code, out, err) =
        t.b.cli_status(&["reserve", "fs1", "--on-shortage", "proceed", "--json"])?;
    ensure!(code == 0, "exit {code}: {out}{err}");
    let list = json(&t.b.cli(["vfs", "--json"])?)?;
    ensure!(
        list[0]["reservations"].as_array().map(Vec::len) == Some(1),
        "only the mount: {list}"
    );
    ensure!(list[0]["shortages"][0]["kind"] == "link_missing", "{list}");
    t.b.cli(["release", "fs1"])?;
    ensure!(mounted_at(&t.mount)?.is_none());
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_second_vfs_is_refused_what_the_first_holds() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("res-conflict")?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let c = lab.add_site("site-c")?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b", "site-c"])?;
    // Both VFSs mount their volume at `shared/data`: at their active sites under different
    // mount roots, at their common DR site at the same path.
    let (a_root, b_root, c_root) = (mount_root(&a)?, mount_root(&b)?, mount_root(&c)?);
    make_replica(&b, "fs1")?;
    make_replica(&b, "fs2")?;
    let b_config = write_config_with_peers(
        &b,
        &certs,
        &[&a, &c],
        &dr_resources(&b, &b_root, ETH0_LAN, "0"),
    )?;
    let a_config = write_config_with_peers(
        &a,
        &certs,
        &[&b],
        &active_body(&a, &a_root, &vfs_yaml("fs1", "site-b", "shared/data", 0)),
    )?;
    let c_config = write_config_with_peers(
        &c,
        &certs,
        &[&b],
        &active_body(&c, &c_root, &vfs_yaml("fs2", "site-b", "shared/data", 1)),
    )?;
    let agent_b = Agent::start(&b, &b_config)?;
    let agent_a = Agent::start(&a, &a_config)?;
    let agent_c = Agent::start(&c, &c_config)?;
    wait_definition(&agent_b, "fs1")?;
    wait_definition(&agent_b, "fs2")?;

    agent_a.cli(["reserve", "fs1"])?;
    let (code, out, _) = agent_c.cli_status(&["precheck", "fs2", "--json"])?;
    ensure!(code == 3, "exit {code}: {out}");
    let r = json(&out)?;
    ensure!(
        kinds(&r) == ["link_reserved", "mount_point_reserved"],
        "{r}"
    );
    for d in r["discrepancies"].as_array().context("discrepancies")? {
        ensure!(d["holder"] == "fs1", "{d}");
    }
    let (code, _, _) = agent_c.cli_status(&["reserve", "fs2", "--on-shortage", "abort"])?;
    ensure!(code == 3);
    let list = json(&agent_b.cli(["vfs", "--json"])?)?;
    let fs2 = list
        .as_array()
        .context("list")?
        .iter()
        .find(|v| v["name"] == "fs2")
        .context("fs2")?
        .clone();
    ensure!(
        fs2["reservations"].as_array().map(Vec::len) == Some(0),
        "{fs2}"
    );
    // site-c may not release fs1: it does not own it.
    let (code, _, err) = agent_c.cli_status(&["release", "fs1"])?;
    ensure!(
        code != 0 && (err.contains("unknown VFS fs1") || err.contains("does not own")),
        "exit {code}: {err}"
    );
    agent_a.cli(["release", "fs1"])?;
    Ok(())
}
