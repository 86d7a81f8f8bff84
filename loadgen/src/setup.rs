//! Setup through the business HTTP API, before any executor starts: users,
//! one access token per connection, groups with their members.
//!
//! Blocking, on a few threads, each with one keep-alive connection that
//! pipelines. A user that already exists (an earlier run) costs one request:
//! its token is asked for first, and the user is created only on a 404.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http::{BlockingClient, Request, Response};

/// Requests pipelined per round trip: enough to hide the round trip,
/// small enough that one failure costs little.
const PIPELINE_DEPTH: usize = 64;
/// Ids per `PUT /v1/groups` members list (the gateway takes up to 10,000).
const PUT_MEMBERS_MAX: usize = 10_000;
/// Ids per `POST /v1/groups/{g}/members` (PROTOCOL: at most 1,000).
const ADD_MEMBERS_MAX: usize = 1_000;
/// Token lifetime asked for: longer than any run.
const TOKEN_TTL_S: u64 = 86_400;
/// How long to wait for `GET /healthz` before giving up.
const HEALTH_WAIT: Duration = Duration::from_secs(10);

/// Waits until `GET /healthz` answers 200.
pub fn wait_healthy(http: SocketAddr, api_key: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + HEALTH_WAIT;
    loop {
        let mut c = BlockingClient::new(http, api_key);
        match c.request("GET", "/healthz", None) {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) if std::time::Instant::now() >= deadline => {
                bail!("GET /healthz on {http} answered {}: {}", r.status, r.text())
            }
            Err(e) if std::time::Instant::now() >= deadline => {
                bail!("the server's HTTP API at {http} is not reachable: {e}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Makes sure every user in `users` exists and returns a token per user,
/// minted for `device`, in the same order. Uses `threads` connections.
pub fn users_with_tokens(
    http: SocketAddr,
    api_key: &str,
    users: &[String],
    device: &str,
    threads: usize,
) -> anyhow::Result<Vec<String>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let threads = threads.clamp(1, users.len());
    let per = users.len().div_ceil(threads);
    let results: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(per)
            .map(|chunk| s.spawn(move || tokens_for_chunk(http, api_key, chunk, device)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a setup thread panicked")))
            })
            .collect()
    });
    let mut tokens = Vec::with_capacity(users.len());
    for r in results {
        tokens.extend(r?);
    }
    Ok(tokens)
}

fn token_request(user: &str, device: &str) -> Request<'static> {
    let body = serde_json::json!({ "device": device, "ttl_s": TOKEN_TTL_S });
    (
        "POST",
        format!("/v1/users/{user}/tokens"),
        Some(body.to_string().into_bytes()),
    )
}

fn tokens_for_chunk(
    http: SocketAddr,
    api_key: &str,
    users: &[String],
    device: &str,
) -> anyhow::Result<Vec<String>> {
    let mut c = BlockingClient::new(http, api_key);
    let mut tokens = Vec::with_capacity(users.len());
    for batch in users.chunks(PIPELINE_DEPTH) {
        let reqs: Vec<_> = batch.iter().map(|u| token_request(u, device)).collect();
        let resps = c.pipeline(&reqs).context("minting tokens")?;
        // Users that do not exist yet: create them, then mint again.
        let missing: Vec<usize> = resps
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == 404)
            .map(|(i, _)| i)
            .collect();
        let mut resps: Vec<Option<Response>> = resps.into_iter().map(Some).collect();
        if !missing.is_empty() {
            let puts: Vec<Request<'_>> = missing
                .iter()
                .map(|&i| {
                    (
                        "PUT",
                        format!("/v1/users/{}", batch[i]),
                        Some(b"{}".to_vec()),
                    )
                })
                .collect();
            for (r, &i) in c
                .pipeline(&puts)
                .context("creating users")?
                .iter()
                .zip(&missing)
            {
                if r.status != 200 {
                    bail!(
                        "PUT /v1/users/{} answered {}: {}",
                        batch[i],
                        r.status,
                        r.text()
                    );
                }
            }
            let again: Vec<_> = missing
                .iter()
                .map(|&i| token_request(&batch[i], device))
                .collect();
            for (r, &i) in c
                .pipeline(&again)
                .context("minting tokens")?
                .into_iter()
                .zip(&missing)
            {
                resps[i] = Some(r);
            }
        }
        for (r, user) in resps.into_iter().zip(batch) {
            let r = r.ok_or_else(|| anyhow::anyhow!("no token response for {user}"))?;
            if r.status != 200 {
                bail!(
                    "POST /v1/users/{user}/tokens answered {}: {}",
                    r.status,
                    r.text()
                );
            }
            let token = r.json()["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("token response without a token: {}", r.text()))?;
            tokens.push(token);
        }
    }
    Ok(tokens)
}

/// Creates or updates group `gid` so that its members are exactly `members`.
pub fn group_with_members(
    http: SocketAddr,
    api_key: &str,
    gid: &str,
    members: &[String],
) -> anyhow::Result<()> {
    let mut c = BlockingClient::new(http, api_key);
    let (first, rest) = members.split_at(members.len().min(PUT_MEMBERS_MAX));
    let body = serde_json::json!({ "name": gid, "members": first });
    let r = c
        .request(
            "PUT",
            &format!("/v1/groups/{gid}"),
            Some(body.to_string().as_bytes()),
        )
        .context("creating the group")?;
    if r.status != 200 {
        bail!("PUT /v1/groups/{gid} answered {}: {}", r.status, r.text());
    }
    for chunk in rest.chunks(ADD_MEMBERS_MAX) {
        let body = serde_json::json!({ "add": chunk });
        let r = c
            .request(
                "POST",
                &format!("/v1/groups/{gid}/members"),
                Some(body.to_string().as_bytes()),
            )
            .context("adding group members")?;
        if r.status != 200 {
            bail!(
                "POST /v1/groups/{gid}/members answered {}: {}",
                r.status,
                r.text()
            );
        }
    }
    Ok(())
}
