//! The components kwokctl started, read from its pid files and `/proc`: whether each runs,
//! what it listens on, and since when.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

/// One component of a cluster.
#[derive(Debug)]
pub struct Component {
    /// Its name (the pid file's stem: `kube-apiserver`, ...).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// When kwokctl started it (the pid file's modification time).
    started: Option<SystemTime>,
}

/// The components of the cluster in `dir`, sorted by name.
pub fn components(dir: &Path) -> Vec<Component> {
    let Ok(entries) = std::fs::read_dir(dir.join("pids")) else {
        return vec![];
    };
    let mut found: Vec<Component> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_stem()?.to_string_lossy().into_owned();
            let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            let started = entry.metadata().and_then(|m| m.modified()).ok();
            Some(Component { name, pid, started })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Every running process whose command line (NUL-separated arguments joined by spaces)
/// satisfies `matches`.
pub fn matching(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let line: String = String::from_utf8_lossy(&raw).replace('\0', " ");
                matches(&line)
            })
        })
        .collect()
}

impl Component {
    /// Its line in `cargo xtask cluster status`: name, pid, state, ports, age.
    pub fn row(&self) -> String {
        let ports = self.listening().join(",");
        format!(
            "{:<24} {:>8}  {:<8} {:<32} {}",
            self.name,
            self.pid,
            if self.alive() { "running" } else { "stopped" },
            if ports.is_empty() { "-".into() } else { ports },
            self.since()
        )
    }

    /// Whether the process exists and is not a zombie.
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    /// `address:port` of every TCP socket it listens on.
    pub fn listening(&self) -> Vec<String> {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return vec![];
        };
        let inodes: Vec<String> = fds
            .filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().into_owned();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_owned(),
                )
            })
            .collect();
        let listeners = tcp_listeners(self.pid);
        let mut out: Vec<String> = inodes
            .iter()
            .filter_map(|inode| listeners.get(inode).cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// How long ago it started, e.g. `12m 03s ago`.
    pub fn since(&self) -> String {
        let Some(age) = self.started.and_then(|t| t.elapsed().ok()) else {
            return "-".into();
        };
        let secs = age.as_secs();
        match secs {
            0..60 => format!("{secs}s ago"),
            60..3600 => format!("{}m {:02}s ago", secs / 60, secs % 60),
            _ => format!("{}h {:02}m ago", secs / 3600, secs % 3600 / 60),
        }
    }
}

/// Socket inode → `address:port` for every listening TCP socket (IPv4 only) in the network
/// namespace of process `pid`.
fn tcp_listeners(pid: u32) -> HashMap<String, String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st, ..., inode at index 9; 0A is LISTEN.
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let (addr, port) = fields.get(1)?.split_once(':')?;
            let addr = u32::from_str_radix(addr, 16).ok()?.to_le_bytes();
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = std::net::Ipv4Addr::from(addr);
            Some((fields.get(9)?.to_string(), format!("{ip}:{port}")))
        })
        .collect()
}
