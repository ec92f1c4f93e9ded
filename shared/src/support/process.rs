//! Who a local process is, in a way that survives PID reuse: this boot, the PID, and the
//! process's start time (in clock ticks since boot). A process is alive only if all three still
//! match and it is not a zombie (killed but not yet reaped).

/// The identity of one local process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The first 12 hex digits of this boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat`, field 22); 0 when unknown.
    pub start: u64,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().replace('-', "").chars().take(12).collect())
        .unwrap_or_else(|_| "noboot".into())
}

/// The state letter and start time of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields follow the parenthesised command name: state is the first, start time the 20th.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

impl ProcessIdentity {
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            boot: boot_id(),
            pid,
            start: stat(pid).map_or(0, |(_, start)| start),
        }
    }

    /// `boot.pid.start`: file-name safe, and what [`Self::parse`] reads.
    pub fn tag(&self) -> String {
        format!("{}.{}.{}", self.boot, self.pid, self.start)
    }

    pub fn parse(tag: &str) -> Option<Self> {
        let mut parts = tag.split('.');
        let (boot, pid, start) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || boot.is_empty() {
            return None;
        }
        Some(Self {
            boot: boot.to_string(),
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }

    /// True while this very process runs: same boot, its PID not reused by another process
    /// (same start time), and not a zombie.
    pub fn is_alive(&self) -> bool {
        if self.boot != boot_id() {
            return false;
        }
        match stat(self.pid) {
            Some((state, start)) => {
                state != "Z" && state != "X" && (self.start == 0 || start == self.start)
            }
            None => false,
        }
    }
}

/// For identities of earlier versions (a bare PID): alive while the PID runs and is not a
/// zombie (PID reuse cannot be told apart).
pub fn pid_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// The lease owner name of a local process: `local:<host>:<boot>.<pid>.<start>`.
pub fn local_owner_id() -> String {
    format!("local:{}:{}", host_name(), ProcessIdentity::current().tag())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// True only for a local owner on this host whose process no longer runs (its PID gone or
/// reused, a zombie, or another boot); a lease held by such an owner cannot be renewed by
/// anyone, so its work may be resumed at once.
pub fn is_dead_local_owner(owner: &str) -> bool {
    use {pid_alive, ProcessIdentity};
    let mut parts = owner.splitn(3, ':');
    let (Some("local"), Some(host), Some(who)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != host_name() {
        return false;
    }
    match ProcessIdentity::parse(who) {
        Some(identity) => !identity.is_alive(),
        // An owner of an earlier version: a bare PID.
        None => who
            .parse::<u32>()
            .is_ok_and(|pid| pid != std::process::id() && !pid_alive(pid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_its_tag_round_trips() {
        let me = ProcessIdentity::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
        assert_eq!(ProcessIdentity::parse(&me.tag()), Some(me.clone()));
        assert!(ProcessIdentity::parse("a.b").is_none());
        // Another start time is another process with the same PID.
        let reused = ProcessIdentity {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive());
        let other_boot = ProcessIdentity {
            boot: "000000000000".into(),
            ..me
        };
        assert!(!other_boot.is_alive());
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!pid_alive(pid), "exited but not reaped: a zombie");
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn dead_and_live_owners() {
        assert!(
            !is_dead_local_owner(&local_owner_id()),
            "this process is alive"
        );
        assert!(!is_dead_local_owner("lambda:abc"));
        let dead = format!("local:{}:{}", host_name(), u32::MAX - 1);
        assert!(is_dead_local_owner(&dead));
        // A child that exited but is not reaped yet is a zombie: dead too.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = format!("local:{}:{}", host_name(), child.id());
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(is_dead_local_owner(&zombie));
        child.wait().unwrap();
        // This process with another start time: its PID reused, so the owner is dead.
        let me = ProcessIdentity::current();
        let reused = ProcessIdentity {
            start: me.start + 1,
            ..me
        };
        assert!(is_dead_local_owner(&format!(
            "local:{}:{}",
            host_name(),
            reused.tag()
        )));
    }
}
