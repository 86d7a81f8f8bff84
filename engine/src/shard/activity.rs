//! A device's activity in large groups: whether a push reaches it as the
//! message or as a coalesced `notice` (PROTOCOL.md, large groups), and when
//! its next notice may leave.

use std::sync::Arc;

/// How long a device counts as active in a group after its last `send`,
/// `read`, `sync` or `ack` there (PROTOCOL.md: 5 minutes).
pub const ACTIVE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Groups remembered per connection for activity and notice coalescing; the
/// least recently used is forgotten beyond this.
pub const GROUPS_TRACKED_MAX: usize = 32;
/// At most one `notice` per group per connection per this interval.
pub const NOTICE_INTERVAL_MS: u64 = 1000;

/// A large group this connection touched or got notices for.
pub struct GroupTrack {
    pub conv: Arc<str>,
    /// Last `send`/`read`/`sync`/`ack` here (0: never).
    pub active_ms: u64,
    /// Last notice sent (0: never).
    pub notice_ms: u64,
    /// A newer max seq waiting for the next notice slot.
    pub notice_pending: Option<u64>,
}

/// The large groups one connection touched, at most [`GROUPS_TRACKED_MAX`].
#[derive(Default)]
pub struct GroupActivity(Vec<GroupTrack>);

impl GroupActivity {
    /// The record of `conv`, created (evicting the least recently used
    /// beyond the bound) if missing.
    pub fn track(&mut self, conv: &str) -> &mut GroupTrack {
        if let Some(i) = self.0.iter().position(|g| &*g.conv == conv) {
            return &mut self.0[i];
        }
        if self.0.len() >= GROUPS_TRACKED_MAX {
            let oldest = (0..self.0.len())
                .min_by_key(|&i| self.0[i].active_ms.max(self.0[i].notice_ms))
                .unwrap_or(0);
            self.0.swap_remove(oldest);
        }
        self.0.push(GroupTrack {
            conv: conv.into(),
            active_ms: 0,
            notice_ms: 0,
            notice_pending: None,
        });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    /// Note activity in `conv` (group conversations only).
    pub fn touch(&mut self, conv: &str, now: u64) {
        if conv.starts_with("group:") {
            self.track(conv).active_ms = now;
        }
    }

    /// Active in `conv` within the window? Pointers are compared first: a
    /// record that adopted the owner's shared text (on its first string
    /// match) is found without reading a string, one cache miss less per
    /// member of a large fan-out.
    pub fn is_active(&mut self, conv: &Arc<str>, now: u64) -> bool {
        let g = match self.0.iter().position(|g| Arc::ptr_eq(&g.conv, conv)) {
            Some(i) => &mut self.0[i],
            None => match self.0.iter_mut().find(|g| *g.conv == **conv) {
                Some(g) => {
                    g.conv = conv.clone();
                    g
                }
                None => return false,
            },
        };
        g.active_ms != 0 && now.saturating_sub(g.active_ms) < ACTIVE_WINDOW_MS
    }

    /// Start loading the records into the cache (see `Slab::prefetch`).
    pub fn prefetch(&self) {
        if !self.0.is_empty() {
            super::prefetch::prefetch(self.0.as_ptr().cast());
        }
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut GroupTrack> {
        self.0.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_is_found_by_text_then_by_the_adopted_pointer() {
        let mut a = GroupActivity::default();
        a.touch("group:g1", 1_000);
        a.touch("dm:a:b", 1_000);
        let shared: Arc<str> = "group:g1".into();
        assert!(a.is_active(&shared, 2_000), "found by text");
        assert!(
            a.0.iter().any(|g| Arc::ptr_eq(&g.conv, &shared)),
            "the record adopted the shared text"
        );
        assert!(a.is_active(&shared, 2_000), "found by pointer");
        // Touching by text after the adoption updates the same record.
        a.touch("group:g1", 5_000);
        assert_eq!(a.0.len(), 1, "a dm is never tracked");
        assert!(a.is_active(&shared, 5_000 + ACTIVE_WINDOW_MS - 1));
        assert!(
            !a.is_active(&shared, 5_000 + ACTIVE_WINDOW_MS),
            "window over"
        );
    }

    #[test]
    fn other_groups_and_notice_only_records_are_not_active() {
        let mut a = GroupActivity::default();
        a.touch("group:g1", 1_000);
        assert!(!a.is_active(&"group:g10".into(), 1_000));
        assert!(!a.is_active(&"group:g".into(), 1_000));
        // A record made for notices only (never touched) is not activity.
        a.track("group:g2").notice_ms = 1_000;
        assert!(!a.is_active(&"group:g2".into(), 1_000));
    }

    #[test]
    fn records_are_bounded_and_the_least_recent_goes_first() {
        let mut a = GroupActivity::default();
        for i in 0..GROUPS_TRACKED_MAX as u64 {
            a.touch(&format!("group:g{i}"), 10 + i);
        }
        a.touch("group:new", 1_000);
        assert_eq!(a.0.len(), GROUPS_TRACKED_MAX);
        assert!(!a.is_active(&"group:g0".into(), 1_000), "oldest forgotten");
        assert!(a.is_active(&"group:g1".into(), 1_000));
        assert!(a.is_active(&"group:new".into(), 1_000));
    }
}
