//! What the attributor may commit: per input partition, the offsets read but not finished
//! (parked, or their copy in flight); the commit position is the oldest unfinished one.

use std::collections::{BTreeSet, HashMap};

type Partition = (String, i32);

/// Per input partition: offsets read but not finished (parked, or their copy in flight),
/// and where the next read starts; the commit position is the oldest unfinished offset.
#[derive(Debug, Default)]
pub(super) struct OffsetTracker {
    partitions: HashMap<Partition, Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    unfinished: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl OffsetTracker {
    pub(super) fn read(&mut self, partition: &Partition, offset: i64) {
        let progress = self.partitions.entry(partition.clone()).or_default();
        progress.unfinished.insert(offset);
        progress.next = progress.next.max(offset + 1);
    }

    pub(super) fn finished(&mut self, partition: &Partition, offset: i64) {
        if let Some(progress) = self.partitions.get_mut(partition) {
            progress.unfinished.remove(&offset);
        }
    }

    /// Positions that moved since the last call.
    pub(super) fn advance_commits(&mut self) -> Vec<(Partition, i64)> {
        let mut moved = Vec::new();
        for (partition, progress) in &mut self.partitions {
            let position = progress
                .unfinished
                .first()
                .copied()
                .unwrap_or(progress.next);
            if position > progress.committed {
                progress.committed = position;
                moved.push((partition.clone(), position));
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_oldest_unfinished_record() {
        let mut tracker = OffsetTracker::default();
        let p = ("raw.k8s.events".to_string(), 0);
        for offset in 0..5 {
            tracker.read(&p, offset);
        }
        tracker.finished(&p, 0);
        tracker.finished(&p, 1);
        tracker.finished(&p, 3);
        // 2 is parked: nothing past it may be committed.
        assert_eq!(tracker.advance_commits(), vec![(p.clone(), 2)]);
        assert_eq!(tracker.advance_commits(), vec![]);
        tracker.finished(&p, 2);
        tracker.finished(&p, 4);
        assert_eq!(tracker.advance_commits(), vec![(p.clone(), 5)]);
    }
}
