//! The lab: a LAN (bridge namespace), sites (namespace + directories + pool) and clients.
use std::{
    any::Any,
    ffi::OsStr,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{command, run},
    daemon::Daemon,
    guard::DirGuard,
    netns::Netns,
    registry::{Footprint, Registry},
    storage::{GIB, Pool, check_name},
};

/// Prefix of every lab's network namespace names: `vfsdr-<id>-lan`, `vfsdr-<id>-<site>`.
pub const NETNS_PREFIX: &str = "vfsdr-";
/// Prefix of every lab's directory in the temp dir: `/tmp/vfsdr-lab-<id>`.
pub const DIR_PREFIX: &str = "vfsdr-lab-";
/// Prefix length of the LAN subnet 198.18.0.0/24 (inside 198.18.0.0/15).
pub const LAN_PREFIX_LEN: u8 = 24;
/// The bridge's own address on the LAN: 198.18.0.254.
pub const BRIDGE_HOST: u8 = 254;
/// The interface of a site or client on the LAN, inside its namespace.
pub const LAN_INTERFACE: &str = "eth0";

const FIRST_SITE: u8 = 1;
const LAST_SITE: u8 = 99;
const FIRST_SERVICE: u8 = 100;
const LAST_SERVICE: u8 = 199;
const FIRST_CLIENT: u8 = 200;
const LAST_CLIENT: u8 = 249;

/// `198.18.0.HOST`, an address on the lab LAN.
pub fn lan_address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, host)
}

/// The `n`th address reserved for services (VFS addresses that move between sites):
/// `198.18.0.(100 + n)`, `n` in 0..100. No site or client ever gets one.
pub fn service_address(n: u8) -> Ipv4Addr {
    assert!(
        n <= LAST_SERVICE - FIRST_SERVICE,
        "service address index {n} out of 0..100"
    );
    lan_address(FIRST_SERVICE + n)
}

/// Options for [`Lab::add_site_with`].
#[derive(Clone, Debug)]
pub struct SiteOptions {
    /// Size of the sparse pool file (default 8 GiB; it costs only what is written).
    pub pool_size: u64,
}

impl Default for SiteOptions {
    fn default() -> Self {
        Self { pool_size: 8 * GIB }
    }
}

/// A lab: the LAN and a temporary directory, to which sites and clients are added. Dropping the lab
/// and everything taken from it tears it all down in reverse order; pieces keep what they depend on
/// alive, so drop order between them does not matter for correctness.
pub struct Lab {
    shared: Arc<LabShared>,
}

// Fields in teardown order: the LAN namespace, then the directory.
struct LabShared {
    lan: Lan,
    dir: DirGuard,
    id: String,
    registry: Registry,
    alloc: Mutex<Alloc>,
}

struct Alloc {
    names: Vec<String>,
    next_site: u8,
    next_client: u8,
}

/// The LAN: a namespace holding the bridge `br0` (up, address 198.18.0.254/24), to which every site
/// and client is attached by a veth pair.
pub struct Lan {
    netns: Netns,
}

impl Lan {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The bridge's name in the LAN namespace.
    pub fn bridge(&self) -> &str {
        "br0"
    }

    /// The bridge's own address (198.18.0.254), handy to ping.
    pub fn address(&self) -> Ipv4Addr {
        lan_address(BRIDGE_HOST)
    }
}

impl Lab {
    /// Builds the LAN for a test: a unique id from `test_name` plus pid and counter, the directory
    /// `/tmp/vfsdr-lab-<id>`, and the bridge namespace `vfsdr-<id>-lan`. Needs root.
    pub fn new(test_name: &str) -> anyhow::Result<Self> {
        crate::require_root()?;
        let id = unique_id(test_name);
        let dir = DirGuard::create(
            &std::env::temp_dir().join(format!("{DIR_PREFIX}{id}")),
            true,
        )?;
        let registry = Registry::new(dir.path());
        let netns = Netns::create_in(&format!("{NETNS_PREFIX}{id}-lan"), Some(registry.clone()))?;
        let cidr = format!("{}/{LAN_PREFIX_LEN}", lan_address(BRIDGE_HOST));
        netns.run(
            "ip",
            ["link", "add", "br0", "type", "bridge", "forward_delay", "0"],
        )?;
        netns.run("ip", ["addr", "add", cidr.as_str(), "dev", "br0"])?;
        netns.run("ip", ["link", "set", "br0", "up"])?;
        Ok(Self {
            shared: Arc::new(LabShared {
                lan: Lan { netns },
                dir,
                id,
                registry,
                alloc: Mutex::new(Alloc {
                    names: Vec::new(),
                    next_site: FIRST_SITE,
                    next_client: FIRST_CLIENT,
                }),
            }),
        })
    }

    /// The unique id in every name of this lab.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The lab's temporary directory (`/tmp/vfsdr-lab-<id>`), removed on teardown.
    pub fn dir(&self) -> &Path {
        self.shared.dir.path()
    }

    pub fn lan(&self) -> &Lan {
        &self.shared.lan
    }

    /// What the lab has created so far (for [`Footprint::leftovers`] after teardown).
    pub fn footprint(&self) -> Footprint {
        self.shared.registry.snapshot()
    }

    /// Adds a site with default [`SiteOptions`]: first site 198.18.0.1, next .2, ...
    pub fn add_site(&self, name: &str) -> anyhow::Result<Site> {
        self.add_site_with(name, SiteOptions::default())
    }

    /// Adds a site: namespace `vfsdr-<id>-<name>` on the LAN, directory `<lab dir>/<name>` with
    /// `config/`, `state/`, `run/`, and a pool in it.
    pub fn add_site_with(&self, name: &str, options: SiteOptions) -> anyhow::Result<Site> {
        let host = self.reserve(name, |a| {
            (a.next_site <= LAST_SITE).then(|| {
                a.next_site += 1;
                a.next_site - 1
            })
        })?;
        let dir = Arc::new(DirGuard::create(&self.dir().join(name), true)?);
        for sub in ["config", "state", "run"] {
            let p = dir.path().join(sub);
            fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let node = Node::attach(&self.shared, name, host)?;
        let keep: Arc<dyn Any + Send + Sync> = Arc::new((dir.clone(), self.shared.clone()));
        let pool = Pool::create_in(
            dir.path(),
            options.pool_size,
            Some(self.shared.registry.clone()),
            Some(keep),
        )
        .with_context(|| format!("cannot create the pool of site {name}"))?;
        Ok(Site {
            pool,
            node,
            dir,
            _lab: self.shared.clone(),
        })
    }

    /// Adds a client: namespace `vfsdr-<id>-<name>` on the LAN (198.18.0.200, .201, ...) and a
    /// directory `<lab dir>/<name>`.
    pub fn add_client(&self, name: &str) -> anyhow::Result<Client> {
        let host = self.reserve(name, |a| {
            (a.next_client <= LAST_CLIENT).then(|| {
                a.next_client += 1;
                a.next_client - 1
            })
        })?;
        let dir = DirGuard::create(&self.dir().join(name), true)?;
        let node = Node::attach(&self.shared, name, host)?;
        Ok(Client {
            node,
            dir,
            _lab: self.shared.clone(),
        })
    }

    fn reserve(
        &self,
        name: &str,
        next: impl FnOnce(&mut Alloc) -> Option<u8>,
    ) -> anyhow::Result<u8> {
        check_name(name)?;
        if name == "lan" {
            bail!("\"lan\" is the bridge namespace's name; pick another site or client name");
        }
        let mut a = self
            .shared
            .alloc
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if a.names.iter().any(|n| n == name) {
            bail!(
                "lab {} already has a site or client named {name}",
                self.shared.id
            );
        }
        let host = next(&mut a)
            .with_context(|| format!("lab {} has no address left for {name}", self.shared.id))?;
        a.names.push(name.to_string());
        Ok(host)
    }
}

/// A namespace attached to the LAN: `eth0` with its address inside, a bridge port in the LAN.
struct Node {
    netns: Netns,
    name: String,
    address: Ipv4Addr,
}

impl Node {
    fn attach(lab: &LabShared, name: &str, host: u8) -> anyhow::Result<Self> {
        let netns = Netns::create_in(
            &format!("{NETNS_PREFIX}{}-{name}", lab.id),
            Some(lab.registry.clone()),
        )?;
        let mut port = format!("p{host}-{name}");
        port.truncate(15); // IFNAMSIZ - 1; unique in the LAN namespace thanks to the host number
        let lan = &lab.lan.netns;
        // Both ends are created directly in their namespaces; nothing appears in the host's.
        let args = [
            "link",
            "add",
            "name",
            LAN_INTERFACE,
            "netns",
            netns.name(),
            "type",
            "veth",
            "peer",
            "name",
            port.as_str(),
            "netns",
            lan.name(),
        ];
        run(&mut command("ip", args))
            .with_context(|| format!("cannot attach {name} to the LAN"))?;
        lan.run("ip", ["link", "set", port.as_str(), "master", "br0", "up"])?;
        let address = lan_address(host);
        let cidr = format!("{address}/{LAN_PREFIX_LEN}");
        netns.run("ip", ["addr", "add", cidr.as_str(), "dev", LAN_INTERFACE])?;
        netns.run("ip", ["link", "set", LAN_INTERFACE, "up"])?;
        Ok(Self {
            netns,
            name: name.to_string(),
            address,
        })
    }
}

macro_rules! node_accessors {
    () => {
        pub fn name(&self) -> &str {
            &self.node.name
        }

        /// Its address on the LAN (on `eth0`, /24).
        pub fn address(&self) -> Ipv4Addr {
            self.node.address
        }

        /// Its network namespace.
        pub fn netns(&self) -> &Netns {
            &self.node.netns
        }

        /// A command running `program` in its network namespace only (see [`Netns::command`]).
        pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
            self.node.netns.command(program)
        }

        /// Runs `program args` in its network namespace; returns stdout (see [`Netns::run`]).
        pub fn run<I, S>(&self, program: &str, args: I) -> anyhow::Result<String>
        where
            I: IntoIterator<Item = S>,
            S: AsRef<OsStr>,
        {
            self.node.netns.run(program, args)
        }

        /// Starts a daemon in its network namespace (see [`Netns::spawn`]).
        pub fn spawn<I, S>(&self, program: &str, args: I) -> anyhow::Result<Daemon>
        where
            I: IntoIterator<Item = S>,
            S: AsRef<OsStr>,
        {
            self.node.netns.spawn(program, args)
        }

        /// Starts a command from [`Self::command`] as a daemon (see [`Netns::spawn_command`]).
        pub fn spawn_command(&self, cmd: Command) -> anyhow::Result<Daemon> {
            self.node.netns.spawn_command(cmd)
        }

        /// Pings `address` from here (3 echo requests 0.2 s apart, 2 s timeout each); Ok if any reply
        /// came back.
        pub fn ping(&self, address: Ipv4Addr) -> anyhow::Result<()> {
            let addr = address.to_string();
            self.run(
                "ping",
                ["-c", "3", "-i", "0.2", "-W", "2", "-q", addr.as_str()],
            )
            .map(drop)
            .with_context(|| {
                format!(
                    "{} cannot reach {address} (needs iputils-ping)",
                    self.node.name
                )
            })
        }
    };
}

/// A site: its namespace on the LAN, its directory with `config/`, `state/`, `run/`, and its pool.
pub struct Site {
    // Fields in teardown order.
    pool: Pool,
    node: Node,
    dir: Arc<DirGuard>,
    _lab: Arc<LabShared>,
}

impl Site {
    node_accessors!();

    /// The site's directory (`<lab dir>/<name>`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir().join("config")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    /// The site's XFS pool, mounted at `<site dir>/pool`.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A client: its namespace on the LAN and a directory.
pub struct Client {
    node: Node,
    dir: DirGuard,
    _lab: Arc<LabShared>,
}

impl Client {
    node_accessors!();

    /// The client's directory (`<lab dir>/<name>`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `<pid>x<3 hex of the clock><counter>-<slug of test_name>`: unique among live processes, and the
/// owner pid can be read back by [`crate::sweep_stale`].
fn unique_id(test_name: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0)
        & 0xfff;
    let mut slug = String::new();
    for c in test_name.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 20 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "lab" } else { slug };
    format!("{}x{clock:03x}{seq}-{slug}", std::process::id())
}

/// The pid of the process that created a lab, from a name that starts with its id.
pub(crate) fn owner_pid(id_and_rest: &str) -> Option<u32> {
    id_and_rest.split_once('x')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_carry_the_pid() {
        let a = unique_id("lab::builds a_site!");
        let b = unique_id("lab::builds a_site!");
        assert_ne!(a, b);
        assert!(a.ends_with("-lab-builds-a-site"), "{a}");
        assert_eq!(owner_pid(&a), Some(std::process::id()));
        assert!(unique_id("").ends_with("-lab"));
        assert!(unique_id(&"x".repeat(100)).len() < 40);
    }

    #[test]
    fn address_plan() {
        assert_eq!(lan_address(1).to_string(), "198.18.0.1");
        assert_eq!(service_address(0).to_string(), "198.18.0.100");
        assert_eq!(service_address(99).to_string(), "198.18.0.199");
    }
}
