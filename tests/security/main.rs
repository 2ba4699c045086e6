//! The threat model of docs/security.md, each case as real connections of the role named.
//! Cases that crashed the server before their fix run on a cluster of their own. One module per
//! boundary; docs/security.md names each case.
use event_store_testing::*;
use std::time::{Duration, Instant};

mod catalog;
mod feed;
mod input;
mod integrity;
mod owner;
mod privacy;
mod projections;
mod roles;

/// Runs projection passes (on `pass`, else on `check`; the worker runs them where preloaded)
/// until `done` holds on `check`, failing with `what` after `secs` seconds.
fn until_projected(
    check: &mut postgres::Client,
    mut pass: Option<&mut postgres::Client>,
    secs: u64,
    what: &str,
    done: impl Fn(&mut postgres::Client) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if !worker() {
            let runner = match pass.as_deref_mut() {
                Some(p) => p,
                None => &mut *check,
            };
            runner.batch_execute("SELECT es_run_projections()").unwrap();
        }
        if done(check) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Roles named after the database (roles are cluster-wide), created with `grants`.
fn role(db: &TestDb, c: &mut postgres::Client, name: &str, grants: &str) -> String {
    let r = format!("{}_{name}", db.name);
    c.batch_execute(&format!("CREATE ROLE {r} {grants}"))
        .unwrap();
    r
}
