//! The conformance suite: every check runs against both backends (`tests/embedded.rs`,
//! `tests/etcd.rs`), each on a fresh store, through [`conformance_suite!`].

#![allow(dead_code)]

pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod watch;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One-second leases: etcd's shortest with the test timings (`LocalEtcdConfig::for_tests`).
pub const TTL: Duration = Duration::from_secs(1);
/// How long after its deadline a lease must be gone: etcd checks expiry every 500 ms and
/// then proposes the revoke through Raft; a loaded 2-core CI machine adds more.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(3);

/// Generates one `#[tokio::test]` per conformance check. `$fixture` is an async fn returning
/// `Option<F>` where `F` has a `store` field and an async `finish(self)`; `None` skips
/// (only allowed outside CI).
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:path) => {
        $crate::conformance_suite!(@each $fixture;
            kv::put_get_delete,
            kv::list_and_delete_prefix,
            kv::compare_and_swap_and_create,
            kv::transactions_are_atomic_and_validated,
            kv::racing_compare_and_swaps_have_one_winner,
            lease::keys_vanish_when_the_lease_expires,
            lease::keep_alive_extends_and_revoke_deletes_now,
            lease::keeper_renews_and_reports_loss,
            watch::events_arrive_in_revision_order,
            watch::watch_from_a_past_revision_replays_it,
            election::leader_fails_over_when_its_lease_expires,
            election::two_campaigners_never_both_lead,
            cluster::switch_over_race_has_exactly_one_winner,
            cluster::ownership_moves_under_contention_one_winner_per_round,
            cluster::a_migration_costs_two_writes,
            cluster::expired_host_lease_marks_its_vms_lost,
            cluster::guarded_changes_stop_when_leadership_ends,
            cluster::records_of_another_schema_are_refused
        );
    };
    (@each $fixture:path; $($module:ident :: $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(fixture) = $fixture().await else { return };
                conformance::$module::$check(&fixture.store).await;
                fixture.finish().await;
            }
        )*
    };
}
