//! Broker sessions: which registered broker incarnations have been heard from
//! recently enough, as the leader sees it.
//!
//! Sessions are leader-only and in memory: they are not replicated and start
//! afresh whenever a node takes over as leader, so every registered, unfenced
//! broker gets one full session timeout from the takeover before it can be
//! fenced. This module is the pure core: it takes the current time and the
//! image as arguments and decides who expired; the leader duties in
//! `duties.rs` read the clock and propose `FenceBroker` for them. It must
//! never read a clock, touch the network, or change the image itself.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::{BrokerId, MetadataImage};

/// The controller's source of monotonic time: a duration since an arbitrary,
/// fixed origin. Passed in so that tests and the simulator drive it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// tokio's monotonic clock (so `tokio::time::pause` also drives it).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Last time each broker incarnation was heard from.
#[derive(Debug, Default)]
pub struct BrokerSessions {
    /// Broker → (epoch of the incarnation heard from, when).
    seen: BTreeMap<BrokerId, (u64, Duration)>,
}

impl BrokerSessions {
    /// Forgets every session, as a new leader must: it cannot know when its
    /// predecessor last heard from anyone.
    pub fn reset(&mut self) {
        self.seen.clear();
    }

    /// Records a heartbeat from incarnation `epoch` of `broker` at `now`.
    /// A heartbeat from an older incarnation than one already seen is ignored:
    /// it must not keep the newer one's session alive, nor the other way round.
    pub fn heartbeat(&mut self, broker: BrokerId, epoch: u64, now: Duration) {
        match self.seen.get(&broker) {
            Some((seen_epoch, _)) if *seen_epoch > epoch => {}
            _ => {
                self.seen.insert(broker, (epoch, now));
            }
        }
    }

    /// The registered, unfenced brokers of `image` whose current incarnation
    /// has not been heard from for longer than `timeout`, with that epoch.
    /// An incarnation seen here for the first time (a new leader, a new
    /// registration) starts its session at `now`. Sessions of brokers the
    /// image no longer lists as live are dropped.
    pub fn expired(
        &mut self,
        image: &MetadataImage,
        now: Duration,
        timeout: Duration,
    ) -> Vec<(BrokerId, u64)> {
        self.seen
            .retain(|id, _| image.brokers.get(id).is_some_and(|b| !b.fenced));
        let mut expired = Vec::new();
        for broker in image.live_brokers() {
            let session = self.seen.entry(broker.id).or_insert((broker.epoch, now));
            if session.0 < broker.epoch {
                // Re-registered since we last heard from it: a new session.
                *session = (broker.epoch, now);
            }
            if session.0 == broker.epoch && now.saturating_sub(session.1) > timeout {
                expired.push((broker.id, broker.epoch));
            }
        }
        expired
    }
}

/// Whether a heartbeat from incarnation `epoch` of `broker` should be told
/// it is fenced: unknown brokers, older incarnations, and a fenced current
/// one must register again. An incarnation newer than the image knows is
/// not fenced (the leader has not applied its registration yet).
pub fn heartbeat_fenced(image: &MetadataImage, broker: BrokerId, epoch: u64) -> bool {
    match image.brokers.get(&broker) {
        None => true,
        Some(b) => b.epoch > epoch || (b.epoch == epoch && b.fenced),
    }
}

#[cfg(test)]
mod tests {
    use proto::image::BrokerEndpoint;
    use proto::MetadataCommand;

    use super::*;

    fn register(image: &mut MetadataImage, id: BrokerId) -> u64 {
        match image.apply(&MetadataCommand::RegisterBroker {
            id,
            endpoint: BrokerEndpoint {
                host: "localhost".into(),
                port: 9092,
            },
            rack: None,
        }) {
            proto::CommandReply::BrokerRegistered { epoch } => epoch,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(6);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn silent_brokers_expire_after_a_full_session() {
        let mut image = MetadataImage::default();
        let e1 = register(&mut image, 1);
        let e2 = register(&mut image, 2);
        let mut sessions = BrokerSessions::default();
        // First look (a new leader at t=100): everyone gets a full session.
        assert!(sessions.expired(&image, secs(100), TIMEOUT).is_empty());
        sessions.heartbeat(2, e2, secs(104));
        assert!(sessions.expired(&image, secs(106), TIMEOUT).is_empty());
        assert_eq!(sessions.expired(&image, secs(107), TIMEOUT), vec![(1, e1)]);
        sessions.heartbeat(2, e2, secs(109));
        assert_eq!(sessions.expired(&image, secs(110), TIMEOUT), vec![(1, e1)]);
        assert_eq!(
            sessions.expired(&image, secs(116), TIMEOUT),
            vec![(1, e1), (2, e2)]
        );
    }

    #[test]
    fn reregistration_and_reset_start_new_sessions() {
        let mut image = MetadataImage::default();
        let e1 = register(&mut image, 1);
        let mut sessions = BrokerSessions::default();
        sessions.heartbeat(1, e1, secs(0));
        assert_eq!(sessions.expired(&image, secs(7), TIMEOUT), vec![(1, e1)]);

        // A new incarnation registers: its session starts when first seen.
        let e1b = register(&mut image, 1);
        assert!(e1b > e1);
        assert!(sessions.expired(&image, secs(8), TIMEOUT).is_empty());
        // The old incarnation's heartbeats do not keep the new one alive.
        sessions.heartbeat(1, e1, secs(13));
        assert_eq!(sessions.expired(&image, secs(15), TIMEOUT), vec![(1, e1b)]);

        // A new leader forgets everything and grants a full session again.
        sessions.reset();
        assert!(sessions.expired(&image, secs(20), TIMEOUT).is_empty());
        assert_eq!(sessions.expired(&image, secs(27), TIMEOUT), vec![(1, e1b)]);
    }

    #[test]
    fn fenced_brokers_are_not_expired_and_are_told_so() {
        let mut image = MetadataImage::default();
        let e1 = register(&mut image, 1);
        let mut sessions = BrokerSessions::default();
        assert!(sessions.expired(&image, secs(0), TIMEOUT).is_empty());
        image.apply(&MetadataCommand::FenceBroker { id: 1, epoch: e1 });
        assert!(sessions.expired(&image, secs(60), TIMEOUT).is_empty());
        assert!(heartbeat_fenced(&image, 1, e1));
        assert!(heartbeat_fenced(&image, 9, 1), "unknown broker");
        let e1b = register(&mut image, 1);
        assert!(!heartbeat_fenced(&image, 1, e1b));
        assert!(heartbeat_fenced(&image, 1, e1), "older incarnation");
        assert!(!heartbeat_fenced(&image, 1, e1b + 1), "image behind");
    }
}
