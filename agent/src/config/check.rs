//! [`VfsDef::validate`]: the rules of the configuration, applied to a definition that did not
//! come from YAML (a peer sent it as JSON, or it was read back from the state store).

use std::path::Path;

use super::VfsDef;
use super::units;
use super::values::{self, Seen};

/// The problems found so far, as `FIELD: MESSAGE`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, field: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }

    fn rule(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(field, message);
        }
    }

    /// Checks name `name` of item `item` (at `field`) by `rule`, then that `seen` does not
    /// already have it.
    fn name(
        &mut self,
        rule: Result<(), String>,
        seen: &mut Seen<()>,
        (what, name): (&str, &str),
        (item, field): (&str, &str),
    ) {
        match rule {
            Err(message) => self.push(field, message),
            Ok(()) => {
                if let Some((message, ())) = seen.add(what, name, item, ()) {
                    self.push(field, message);
                }
            }
        }
    }
}

impl VfsDef {
    /// Checks the definition by the rules the configuration applies to a local one, except those
    /// that need a site's configuration: that the replication peer is a known other site, and
    /// that mounts, names and addresses do not meet those of the site's directories and other
    /// VFSs.
    ///
    /// # Errors
    /// Every problem, as `FIELD: MESSAGE`, where FIELD is relative to the definition and named
    /// as in its JSON form: `name`, `volumes[0].size_bytes`, `smb.shares[1].volume`,
    /// `snapshots.rules[0].every_s`.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Problems::default();
        problems.rule("name", values::vfs_name(&self.name));
        self.check_volumes(&mut problems);
        self.check_interfaces(&mut problems);
        self.check_smb(&mut problems);
        let replication = &self.replication;
        problems.rule("replication.peer", values::name(&replication.peer));
        problems.rule(
            "replication.interval_s",
            units::interval(replication.interval_s),
        );
        if let Some(bytes) = replication.trigger_at_risk_bytes {
            problems.rule("replication.trigger_at_risk_bytes", units::trigger(bytes));
        }
        if let Some(limit) = replication.bandwidth_limit_bytes_per_s {
            let field = "replication.bandwidth_limit_bytes_per_s";
            problems.rule(field, units::bandwidth_limit(limit));
        }
        if self.snapshots.rules.is_empty() {
            problems.push("snapshots.rules", "expected at least one rule, found none");
        }
        for (index, rule) in self.snapshots.rules.iter().enumerate() {
            let at = format!("snapshots.rules[{index}]");
            problems.rule(&format!("{at}.for_s"), units::retention_for(rule.for_s));
            let every = units::retention_every(rule.every_s, rule.for_s);
            problems.rule(&format!("{at}.every_s"), every);
        }
        match problems.0.is_empty() {
            true => Ok(()),
            false => Err(problems.0),
        }
    }

    fn check_volumes(&self, problems: &mut Problems) {
        if self.volumes.is_empty() {
            problems.push("volumes", "expected at least one volume, found none");
        }
        let mut names = Seen::new();
        let mut mounts: Vec<(&Path, String)> = Vec::new();
        for (index, volume) in self.volumes.iter().enumerate() {
            let at = format!("volumes[{index}]");
            let field = format!("{at}.name");
            let rule = values::name(&volume.name);
            problems.name(
                rule,
                &mut names,
                ("volume name", &volume.name),
                (&at, &field),
            );
            let size = units::volume_size(volume.size_bytes, volume.filesystem);
            problems.rule(&format!("{at}.size_bytes"), size);
            let field = format!("{at}.mount");
            let written = volume
                .mount
                .to_str()
                .ok_or_else(|| format!("mount path `{}` is not UTF-8", volume.mount.display()));
            // Relative mounts are compared with each other, absolute ones likewise: where a
            // relative one lands depends on the site's mount root.
            match written.and_then(values::volume_mount) {
                Err(message) => problems.push(&field, message),
                Ok(()) => {
                    let conflict = mounts
                        .iter()
                        .filter(|(other, _)| other.is_absolute() == volume.mount.is_absolute())
                        .find_map(|(other, other_at)| {
                            let other_name = format!("the mount of {other_at}");
                            values::mount_conflict("mount path", &volume.mount, &other_name, other)
                        });
                    if let Some(message) = conflict {
                        problems.push(&field, message);
                    }
                    mounts.push((&volume.mount, at));
                }
            }
        }
    }

    fn check_interfaces(&self, problems: &mut Problems) {
        if self.interfaces.is_empty() {
            problems.push("interfaces", "expected at least one interface, found none");
        }
        let (mut names, mut addresses) = (Seen::new(), Seen::new());
        for (index, interface) in self.interfaces.iter().enumerate() {
            let at = format!("interfaces[{index}]");
            let field = format!("{at}.name");
            let rule = values::name(&interface.name);
            problems.name(
                rule,
                &mut names,
                ("interface name", &interface.name),
                (&at, &field),
            );
            let field = format!("{at}.address");
            let (rule, address) = (units::host_address(interface.address), interface.address);
            problems.name(
                rule,
                &mut addresses,
                ("address", &address.to_string()),
                (&at, &field),
            );
            let prefix = units::prefix_len(interface.prefix_len);
            problems.rule(&format!("{at}.prefix_len"), prefix);
            problems.rule(&format!("{at}.network"), values::name(&interface.network));
        }
    }

    fn check_smb(&self, problems: &mut Problems) {
        let smb = &self.smb;
        problems.rule("smb.netbios_name", values::netbios_name(&smb.netbios_name));
        let volumes: Vec<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        let mut names = Seen::ignoring_case();
        for (index, share) in smb.shares.iter().enumerate() {
            let at = format!("smb.shares[{index}]");
            let field = format!("{at}.name");
            let rule = values::share_name(&share.name);
            problems.name(rule, &mut names, ("share name", &share.name), (&at, &field));
            if !volumes.contains(&share.volume.as_str()) {
                let message = values::unknown_share_volume(&share.volume, &volumes);
                problems.push(&format!("{at}.volume"), message);
            }
            problems.rule(&format!("{at}.path"), values::share_path(&share.path));
        }
    }
}
