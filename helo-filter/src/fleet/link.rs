//! The link to Redis: one multiplexed connection for commands and one subscriber. On each
//! (re)connection the member first re-publishes its own shared denials (Redis may have
//! restarted empty), subscribes, then reads every denial key (an announcement made between
//! the two is seen twice, which is harmless); from then on it applies announcements as they
//! come and sends its own. While Redis is unreachable it retries with a backoff capped at
//! 5 s and logs once per interval; changes to share are dropped meanwhile, to be
//! re-published at the reconnect.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use log::{info, warn};
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::{
    Arrival, Fleet, Outgoing,
    wire::{Announcement, Denial},
};
use crate::metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection attempt or a command that takes longer has failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Redis unreachable: one log line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How often the member renews its liveness key, which lasts three times as long.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Why the link failed, as the label of `helo_filter_fleet_errors_total{kind}`.
struct Failure {
    kind: &'static str,
    error: String,
}

fn failed<E: std::fmt::Display>(kind: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure {
        kind,
        error: e.to_string(),
    }
}

/// A command with the link's timeout.
async fn timed<T>(
    kind: &'static str,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Failure> {
    tokio::time::timeout(REDIS_TIMEOUT, command)
        .await
        .map_err(failed(kind))?
        .map_err(failed(kind))
}

pub async fn run(fleet: Fleet, client: redis::Client, mut queue: mpsc::Receiver<Outgoing>) {
    let mut backoff = FIRST_BACKOFF;
    let mut last_logged: Option<Instant> = None;
    loop {
        let failure = serve(&fleet, &client, &mut queue, &mut backoff).await;
        fleet
            .0
            .connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
        metrics::fleet_connected(false);
        metrics::fleet_error(failure.kind);
        if last_logged.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
            warn!(
                "fleet: Redis unreachable ({}: {}); enforcing what is held, retrying every {} s \
                 at most",
                failure.kind,
                failure.error,
                MAX_BACKOFF.as_secs()
            );
            last_logged = Some(Instant::now());
        }
        // Changes made meanwhile are re-published at the reconnect: drop them now.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                change = queue.recv() => if change.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: set up, sync, then announcements both ways until it fails.
async fn serve(
    fleet: &Fleet,
    client: &redis::Client,
    queue: &mut mpsc::Receiver<Outgoing>,
    backoff: &mut Duration,
) -> Failure {
    let mut commands = match timed(
        "connect",
        client.get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(REDIS_TIMEOUT)
                .set_response_timeout(REDIS_TIMEOUT),
        ),
    )
    .await
    {
        Ok(connection) => connection,
        Err(failure) => return failure,
    };
    let names = fleet.0.names.clone();
    let own = fleet.0.local.own_shared(fleet);
    for denial in own {
        if let Err(failure) = publish(&mut commands, fleet, &Outgoing::Share(denial)).await {
            return failure;
        }
    }
    let mut subscriber = match timed("connect", client.get_async_pubsub()).await {
        Ok(subscriber) => subscriber,
        Err(failure) => return failure,
    };
    if let Err(failure) = timed("subscribe", subscriber.subscribe(names.channel())).await {
        return failure;
    }
    match read_all(&mut commands, &names.denials()).await {
        Ok(current) => fleet.resync(current),
        Err(failure) => return failure,
    }
    fleet
        .0
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    metrics::fleet_connected(true);
    let _ = fleet.0.synced.send(true);
    *backoff = FIRST_BACKOFF;
    info!("fleet: connected to Redis as {:?}", fleet.0.name);
    let mut messages = subscriber.into_on_message();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return Failure { kind: "subscribe", error: "the subscription ended".into() };
                };
                match message.get_payload::<String>().map_err(|e| e.to_string()).and_then(|text| {
                    serde_json::from_str::<Announcement>(&text).map_err(|e| e.to_string())
                }) {
                    Ok(Announcement::Added { denial }) => {
                        fleet.receive(denial, Arrival::Announced);
                    }
                    Ok(Announcement::Lifted { net, member }) if member != fleet.0.name => {
                        fleet.lifted(net);
                    }
                    Ok(Announcement::Lifted { .. }) => {}
                    Err(e) => {
                        warn!("fleet: an unreadable announcement: {e}");
                        metrics::fleet_error("decode");
                    }
                }
            }
            change = queue.recv() => {
                let Some(change) = change else {
                    return Failure { kind: "stopped", error: "the daemon is stopping".into() };
                };
                if let Err(failure) = publish(&mut commands, fleet, &change).await {
                    return failure;
                }
            }
            _ = heartbeat.tick() => {
                if let Err(failure) = renew(&mut commands, fleet).await {
                    return failure;
                }
            }
        }
    }
}

/// Writes a change to Redis and announces it.
async fn publish(
    commands: &mut MultiplexedConnection,
    fleet: &Fleet,
    change: &Outgoing,
) -> Result<(), Failure> {
    let names = &fleet.0.names;
    let (key_command, announcement) = match change {
        Outgoing::Share(denial) => {
            let mut set = redis::cmd("SET");
            set.arg(names.denial(denial.net))
                .arg(serde_json::to_string(denial).map_err(failed("encode"))?)
                .arg("EXAT")
                .arg(denial.expires_at);
            let added = Announcement::Added {
                denial: denial.clone(),
            };
            (set, added)
        }
        Outgoing::Lift(net) => {
            let mut del = redis::cmd("DEL");
            del.arg(names.denial(*net));
            let lifted = Announcement::Lifted {
                net: *net,
                member: fleet.0.name.clone(),
            };
            (del, lifted)
        }
    };
    let mut pipe = redis::pipe();
    pipe.add_command(key_command)
        .ignore()
        .cmd("PUBLISH")
        .arg(names.channel())
        .arg(serde_json::to_string(&announcement).map_err(failed("encode"))?)
        .ignore();
    timed("command", pipe.query_async::<()>(commands)).await?;
    if matches!(change, Outgoing::Share(_)) {
        fleet
            .0
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::fleet_denial("sent");
    }
    Ok(())
}

/// Every denial key's value, read with SCAN and MGET.
async fn read_all(
    commands: &mut MultiplexedConnection,
    pattern: &str,
) -> Result<Vec<Denial>, Failure> {
    let keys = scan(commands, pattern).await?;
    let mut denials = Vec::new();
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = timed(
            "command",
            redis::cmd("MGET").arg(chunk).query_async(commands),
        )
        .await?;
        for text in values.into_iter().flatten() {
            match serde_json::from_str(&text) {
                Ok(denial) => denials.push(denial),
                Err(e) => {
                    warn!("fleet: an unreadable denial in Redis: {e}");
                    metrics::fleet_error("decode");
                }
            }
        }
    }
    Ok(denials)
}

async fn scan(commands: &mut MultiplexedConnection, pattern: &str) -> Result<Vec<String>, Failure> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = timed(
            "command",
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(commands),
        )
        .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Renews this member's liveness key and counts the members alive.
async fn renew(commands: &mut MultiplexedConnection, fleet: &Fleet) -> Result<(), Failure> {
    let names = &fleet.0.names;
    let alive_for = HEARTBEAT.as_secs() * 3;
    timed(
        "command",
        redis::cmd("SET")
            .arg(names.member(&fleet.0.name))
            .arg(crate::clock::unix_now())
            .arg("EX")
            .arg(alive_for)
            .query_async::<()>(commands),
    )
    .await?;
    let members = scan(commands, &names.members()).await?;
    fleet
        .0
        .members_seen
        .store(members.len(), std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
