//! ReplayGuard: time window, skew, duplicates, memory bound, non-monotonic clocks.

use tandem_proto::{Error, MisuseError, ReplayConfig, ReplayError, ReplayGuard, RequestId};

fn id(n: u8) -> RequestId {
    RequestId([n; 16])
}

fn guard(capacity: usize) -> ReplayGuard {
    ReplayGuard::new(ReplayConfig {
        window_secs: 100,
        max_skew_secs: 10,
        capacity,
    })
    .expect("valid")
}

#[test]
fn accepts_once_then_rejects_replay() {
    let mut g = guard(10);
    g.check_id(id(1), 1000, 1000).expect("fresh");
    assert!(matches!(
        g.check_id(id(1), 1000, 1001),
        Err(Error::Replay(ReplayError::Replayed { .. }))
    ));
    g.check_id(id(2), 1000, 1001).expect("different id");
}

#[test]
fn time_window_edges() {
    let mut g = guard(10);
    // Exactly at the window edges is accepted; one second beyond is not.
    g.check_id(id(1), 900, 1000).expect("oldest allowed");
    g.check_id(id(2), 1010, 1000).expect("newest allowed");
    assert_eq!(
        g.check_id(id(3), 899, 1000),
        Err(Error::Replay(ReplayError::TooOld {
            created_at: 899,
            now: 1000,
            window_secs: 100
        }))
    );
    assert_eq!(
        g.check_id(id(4), 1011, 1000),
        Err(Error::Replay(ReplayError::FromFuture {
            created_at: 1011,
            now: 1000,
            max_skew_secs: 10
        }))
    );
}

#[test]
fn replay_after_eviction_is_still_rejected_even_if_clock_goes_back() {
    let mut g = guard(10);
    g.check_id(id(1), 1000, 1000).expect("fresh");
    // Much later: id 1 is evicted, but its creation time is outside the window.
    assert!(matches!(
        g.check_id(id(1), 1000, 1200),
        Err(Error::Replay(ReplayError::TooOld { .. }))
    ));
    assert_eq!(g.len(), 0);
    // The node clock steps back: the floor does not, so the evicted id stays rejected.
    assert!(matches!(
        g.check_id(id(1), 1000, 1050),
        Err(Error::Replay(ReplayError::TooOld { .. }))
    ));
}

#[test]
fn memory_bound_rejects_rather_than_forgets() {
    let mut g = guard(3);
    for n in 0..3 {
        g.check_id(id(n), 1000, 1000).expect("room");
    }
    assert_eq!(
        g.check_id(id(9), 1000, 1000),
        Err(Error::Replay(ReplayError::Full { capacity: 3 }))
    );
    // Earlier ids are still remembered.
    assert!(matches!(
        g.check_id(id(0), 1000, 1000),
        Err(Error::Replay(ReplayError::Replayed { .. }))
    ));
    // Once they age out, there is room again.
    g.check_id(id(9), 1150, 1150).expect("evicted old ids");
    assert_eq!(g.len(), 1);
}

#[test]
fn zero_capacity_is_misuse() {
    assert_eq!(
        ReplayGuard::new(ReplayConfig {
            window_secs: 1,
            max_skew_secs: 1,
            capacity: 0
        })
        .map(|_| ()),
        Err(Error::Misuse(MisuseError::ZeroCapacity))
    );
}
