//! Step 4: completions from the bdev channel. They are collected into a buffer sized for the
//! ring (so nothing allocates) and each goes through `finish`.

use spinblk_bdev::Completion;
use spinblk_reactor::Tick;

use super::finish::Outcome;
use super::poller::VirtqPoller;

impl VirtqPoller {
    /// Finishes every request the channel completed; returns how many.
    pub(super) fn reap(&mut self) -> usize {
        if self.in_flight == 0 {
            return 0;
        }
        let VirtqPoller { channel, done, .. } = self;
        channel.poll_completions(&mut |c: Completion| done.push(c));
        let n = self.done.len();
        if n > 0 {
            // One clock read stamps every completion of the pass.
            self.reaped_at = Tick::now();
        }
        for i in 0..n {
            let c = self.done[i];
            // Tags are the heads we submitted; anything else would be a channel bug.
            if let Ok(head) = u16::try_from(c.tag) {
                self.finish(head, Outcome::Completed(c.status));
            }
        }
        self.done.clear();
        n
    }
}
