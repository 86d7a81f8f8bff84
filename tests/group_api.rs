//! The group routes of the business HTTP API (PROTOCOL.md "Business HTTP
//! API"), their errors, and the operational pages: /metrics moving with
//! traffic, /openapi.json covering every /v1 route, ids, API keys.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// Asserts `{"error":{"code":..,"message":..}}`, and the code if given.
fn assert_error(v: &Value, code: Option<&str>, what: &str) {
    let e = &v["error"];
    assert!(e["code"].is_string(), "{what}: error without code: {v}");
    assert!(
        e["message"].is_string(),
        "{what}: error without message: {v}"
    );
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{what}: {v}");
    }
}

/// The group's members via every page of `GET .../members`.
async fn all_members(s: &Server, g: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = format!("/v1/groups/{g}/members");
    // Bound: no test group has more than a few pages.
    for _ in 0..100 {
        let (st, v) = s.request("GET", &path, None).await;
        assert_eq!(st, 200, "GET {path}: {v}");
        for m in v["members"].as_array().expect("members") {
            out.push(m.as_str().expect("member id").to_string());
        }
        match v["next"].as_str() {
            Some(n) => path = format!("/v1/groups/{g}/members?after={n}"),
            None => return out,
        }
    }
    panic!("members of {g} never ended");
}

/// `(code, data)` of every entry in the group's timeline (events only).
async fn event_log(s: &Server, g: &str) -> Vec<(u64, Value)> {
    s.history_all(&group_conv(g))
        .await
        .into_iter()
        .filter(|e| e["type"] == "event")
        .map(|e| (e["code"].as_u64().expect("code"), e["data"].clone()))
        .collect()
}

#[tokio::test]
async fn put_get_update_and_delete_a_group() {
    let s = Server::start(&[]).await;
    s.put_users(&["ga1", "ga2", "ga3", "ga4"]).await;

    let (st, v) = s.request("GET", "/v1/groups/g1", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "GET unknown");

    // Create.
    let (st, created) = s
        .request(
            "PUT",
            "/v1/groups/g1",
            Some(json!({ "name": "One", "members": ["ga2", "ga1", "ga1"] })),
        )
        .await;
    assert_eq!(st, 200, "{created}");
    assert_ts_recent(&created["created_ts"], "created_ts");
    let created_ts = created["created_ts"].clone();
    assert_eq!(
        created,
        json!({ "group": "g1", "name": "One", "members_count": 2, "created_ts": created_ts })
    );
    let (st, v) = s.request("GET", "/v1/groups/g1", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, created, "GET = PUT answer");
    assert_eq!(all_members(&s, "g1").await, ["ga1", "ga2"]);

    // Rename: members and created_ts kept.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (st, v) = s
        .request("PUT", "/v1/groups/g1", Some(json!({ "name": "Uno" })))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({ "group": "g1", "name": "Uno", "members_count": 2, "created_ts": created_ts })
    );
    // Replace the members: name and created_ts kept.
    let (st, v) = s
        .request(
            "PUT",
            "/v1/groups/g1",
            Some(json!({ "members": ["ga2", "ga3", "ga4"] })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({ "group": "g1", "name": "Uno", "members_count": 3, "created_ts": created_ts })
    );
    assert_eq!(all_members(&s, "g1").await, ["ga2", "ga3", "ga4"]);
    // The same name again is no change: no event.
    let (st, v) = s
        .request("PUT", "/v1/groups/g1", Some(json!({ "name": "Uno" })))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["members_count"], 3, "{v}");

    // Name and members in one PUT: 1502, then 1509, then 1508.
    let (st, v) = s
        .request(
            "PUT",
            "/v1/groups/g1",
            Some(json!({ "name": "Tres", "members": ["ga1", "ga2"] })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({ "group": "g1", "name": "Tres", "members_count": 2, "created_ts": created_ts })
    );

    let log = event_log(&s, "g1").await;
    let want = [
        (1501, json!({ "name": "One", "users": ["ga1", "ga2"] })),
        (1502, json!({ "name": "Uno" })),
        (1509, json!({ "users": ["ga3", "ga4"] })),
        (1508, json!({ "users": ["ga1"] })),
        (1502, json!({ "name": "Tres" })),
        (1509, json!({ "users": ["ga1"] })),
        (1508, json!({ "users": ["ga3", "ga4"] })),
    ];
    assert_eq!(log, want, "the group's events in seq order");

    // An unknown member: 404 no_such_user, nothing changes.
    let (st, v) = s
        .request(
            "PUT",
            "/v1/groups/g1",
            Some(json!({ "name": "Changed", "members": ["ga1", "ghost"] })),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_user"), "PUT with a ghost");
    let (_, v) = s.request("GET", "/v1/groups/g1", None).await;
    assert_eq!(v["name"], "Tres", "{v}");
    assert_eq!(v["members_count"], 2, "{v}");
    assert_eq!(all_members(&s, "g1").await, ["ga1", "ga2"]);
    assert_eq!(event_log(&s, "g1").await.len(), 7, "no event stored");
    // ...and a group is not created by a refused PUT.
    let (st, v) = s
        .request(
            "PUT",
            "/v1/groups/g2",
            Some(json!({ "members": ["ghost"] })),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.request("GET", "/v1/groups/g2", None).await;
    assert_eq!(st, 404, "refused create left a group: {v}");

    // An empty body creates an empty, unnamed group.
    let (st, v) = s.request("PUT", "/v1/groups/g3", Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["members_count"], 0, "{v}");
    assert_eq!(v["name"], Value::Null, "{v}");
    // A name over 1,024 bytes is refused.
    let (st, v) = s
        .request(
            "PUT",
            "/v1/groups/g3",
            Some(json!({ "name": "n".repeat(1025) })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_error(&v, None, "long name");

    // Dismiss: 204, then gone everywhere.
    let (st, v) = s.request("DELETE", "/v1/groups/g1", None).await;
    assert_eq!(
        (st, v),
        (204, Value::Null),
        "DELETE answers 204 without a body"
    );
    let (st, v) = s.request("GET", "/v1/groups/g1", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "GET dismissed");
    let (st, v) = s.request("DELETE", "/v1/groups/g1", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "DELETE again");
    let (st, v) = s.request("GET", "/v1/groups/g1/members", None).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.change_members("g1", &["ga1"], &[]).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "members of dismissed");
    let (st, v) = s.request("DELETE", "/v1/groups/nosuch", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "DELETE unknown");

    // The id can be created again; its timeline continues, seqs unreused.
    let (st, v) = s
        .request("PUT", "/v1/groups/g1", Some(json!({ "members": ["ga3"] })))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["members_count"], 1, "{v}");
    assert_eq!(v["name"], Value::Null, "a new group, not the old one: {v}");
    assert_eq!(all_members(&s, "g1").await, ["ga3"]);
    let tail: Vec<(u64, u64)> = s
        .history_all("group:g1")
        .await
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().expect("seq"),
                e["code"].as_u64().expect("code"),
            )
        })
        .skip(7)
        .collect();
    assert_eq!(tail, [(8, 1520), (9, 1501)], "timeline after dismissal");
}

#[tokio::test]
async fn add_and_remove_members() {
    let s = Server::start(&[]).await;
    let ids = ["mu1", "mu2", "mu3", "mu4", "mu5"];
    s.put_users(&ids).await;
    s.put_group("mem", None, &["mu1"]).await;

    let (st, v) = s.change_members("mem", &["mu2", "mu3"], &[]).await;
    assert_eq!((st, v.clone()), (200, json!({ "members_count": 3 })), "{v}");
    // Adding a member again and removing a non-member change nothing.
    let (st, v) = s.change_members("mem", &["mu2"], &["mu5"]).await;
    assert_eq!((st, v.clone()), (200, json!({ "members_count": 3 })), "{v}");
    let (st, v) = s.change_members("mem", &["mu4"], &["mu1"]).await;
    assert_eq!((st, v.clone()), (200, json!({ "members_count": 3 })), "{v}");
    let (st, v) = s
        .request("POST", "/v1/groups/mem/members", Some(json!({})))
        .await;
    assert_eq!((st, v.clone()), (200, json!({ "members_count": 3 })), "{v}");
    assert_eq!(all_members(&s, "mem").await, ["mu2", "mu3", "mu4"]);
    let log = event_log(&s, "mem").await;
    let codes: Vec<u64> = log.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [1501, 1509, 1509, 1508], "{log:?}");
    assert_eq!(log[1].1, json!({ "users": ["mu2", "mu3"] }));
    assert_eq!(log[2].1, json!({ "users": ["mu4"] }));
    assert_eq!(log[3].1, json!({ "users": ["mu1"] }));

    // An unknown user: 404 no_such_user, nothing changes.
    let (st, v) = s.change_members("mem", &["mu5", "ghost"], &["mu2"]).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_user"), "add a ghost");
    assert_eq!(all_members(&s, "mem").await, ["mu2", "mu3", "mu4"]);
    assert_eq!(event_log(&s, "mem").await.len(), 4, "no event stored");

    // 1,000 ids are allowed (here refused for not existing), 1,001 are not.
    let many: Vec<String> = (0..1001).map(|i| format!("nx{i}")).collect();
    let (st, v) = s
        .request(
            "POST",
            "/v1/groups/mem/members",
            Some(json!({ "add": many[..1000] })),
        )
        .await;
    assert_eq!(st, 404, "1,000 unknown ids: {v}");
    assert_error(&v, Some("no_such_user"), "1,000 ids");
    for body in [
        json!({ "add": many }),
        json!({ "remove": many }),
        json!({ "add": many[..500], "remove": many[500..] }),
    ] {
        let (st, v) = s
            .request("POST", "/v1/groups/mem/members", Some(body))
            .await;
        assert_eq!(st, 400, "1,001 ids: {v}");
        assert_error(&v, None, "1,001 ids");
    }
    // Bad ids.
    for body in [
        json!({ "add": ["bad id"] }),
        json!({ "remove": [""] }),
        json!({ "add": ["x".repeat(65)] }),
    ] {
        let (st, v) = s
            .request("POST", "/v1/groups/mem/members", Some(body.clone()))
            .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_error(&v, None, "bad member id");
    }
    assert_eq!(all_members(&s, "mem").await, ["mu2", "mu3", "mu4"]);
    // Unknown group.
    let (st, v) = s.change_members("nosuch", &["mu1"], &[]).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "unknown group");
    let (_, v) = s.request("GET", "/v1/groups/mem", None).await;
    assert_eq!(v["members_count"], 3, "{v}");
}

#[tokio::test]
async fn members_are_paged_with_after_limit_and_next() {
    let s = Server::start(&[]).await;
    let users: Vec<String> = (0..25).map(|i| format!("pg{i:02}")).collect();
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    s.put_users(&ids).await;
    // Given out of order: pages come in byte order.
    let mut shuffled = ids.clone();
    shuffled.reverse();
    s.put_group("paged", None, &shuffled).await;

    let page = |q: &str| {
        let path = format!("/v1/groups/paged/members{q}");
        let s = &s;
        async move {
            let (st, v) = s.request("GET", &path, None).await;
            assert_eq!(st, 200, "GET {path}: {v}");
            v
        }
    };
    let v = page("?limit=10").await;
    assert_eq!(v, json!({ "members": ids[..10], "next": "pg09" }));
    let v = page("?after=pg09&limit=10").await;
    assert_eq!(v, json!({ "members": ids[10..20], "next": "pg19" }));
    let v = page("?after=pg19&limit=10").await;
    assert_eq!(v, json!({ "members": ids[20..] }), "last page has no next");
    // Exactly a page left: still the last page.
    let v = page("?after=pg14&limit=10").await;
    assert_eq!(v, json!({ "members": ids[15..] }), "last page has no next");
    // `after` need not be a member.
    let v = page("?after=pg095&limit=2").await;
    assert_eq!(v, json!({ "members": ["pg10", "pg11"], "next": "pg11" }));
    let v = page("?after=pg24").await;
    assert_eq!(v, json!({ "members": [] }));
    // Default limit (100) holds them all.
    let v = page("").await;
    assert_eq!(v, json!({ "members": ids }));
    let v = page("?after=&limit=").await;
    assert_eq!(v, json!({ "members": ids }), "empty params mean defaults");

    for q in [
        "?limit=0",
        "?limit=abc",
        "?limit=-1",
        "?after=bad%20id",
        "?limit=1001",
    ] {
        let (st, v) = s
            .request("GET", &format!("/v1/groups/paged/members{q}"), None)
            .await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_error(&v, None, q);
    }
    let (st, v) = s.request("GET", "/v1/groups/nosuch/members", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_group"), "members of unknown");
}

#[tokio::test]
async fn presence_and_kick_leave_membership_alone() {
    let s = Server::start(&[]).await;
    s.put_users(&["pk1", "pk2"]).await;
    s.put_group("pk", None, &["pk1", "pk2"]).await;
    let (_, v) = s.request("GET", "/v1/users/pk1/presence", None).await;
    assert_eq!(v, json!({ "user": "pk1", "online": false, "devices": [] }));
    let (st, v) = s.request("GET", "/v1/users/ghost/presence", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_user"), "presence of unknown");
    let (st, v) = s
        .request("POST", "/v1/users/ghost/kick", Some(json!({})))
        .await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_user"), "kick of unknown");

    let mut phone = s.login(Subprotocol::Rkyv, "pk1", "phone").await;
    let mut tablet = s.login(Subprotocol::Json, "pk1", "tablet").await;
    let (st, v) = s.request("GET", "/v1/users/pk1/presence", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["online"], true, "{v}");
    let mut devs: Vec<&str> = v["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device"].as_str().expect("device"))
        .collect();
    devs.sort_unstable();
    assert_eq!(devs, ["phone", "tablet"], "{v}");
    for d in v["devices"].as_array().expect("devices") {
        assert_ts_recent(&d["since_ts"], "since_ts");
    }

    // Refused kicks.
    for body in [
        json!({ "device": "bad device" }),
        json!({ "reason": "r".repeat(10_000) }),
    ] {
        let (st, v) = s
            .request("POST", "/v1/users/pk1/kick", Some(body.clone()))
            .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_error(&v, None, "bad kick");
    }
    tablet.ping().await;
    phone.ping().await;

    let (st, v) = s
        .request(
            "POST",
            "/v1/users/pk1/kick",
            Some(json!({ "device": "phone", "reason": "moved" })),
        )
        .await;
    assert_eq!((st, v.clone()), (200, json!({ "kicked": 1 })), "{v}");
    let k = phone.expect("kicked", REPLY).await;
    assert_eq!(k, json!({ "type": "kicked", "reason": "moved" }));
    assert_eq!(phone.expect_close(REPLY).await, Some(4409));
    let (_, v) = s.request("GET", "/v1/users/pk1/presence", None).await;
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["devices"][0]["device"], "tablet", "{v}");

    // Still a member: the other device gets group traffic, the kicked one
    // reconnects and syncs.
    let (st, v) = s
        .post_message(json!({ "from": "pk2", "to": "group:pk", "kind": "text", "body": "hi" }))
        .await;
    assert_eq!(st, 200, "{v}");
    let m = tablet.expect_msg("group:pk", 2).await;
    assert_eq!(m["from"], "pk2", "{m}");
    let mut phone = s.login(Subprotocol::Rkyv, "pk1", "phone").await;
    let all = phone.sync_all("group:pk", 0).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1], m);
}

#[tokio::test]
async fn metrics_are_exposed_and_move_with_traffic() {
    let s = Server::start(&[]).await;
    let m0 = s.metrics_text().await;
    for series in [
        "tern_connections{shard=\"0\"}",
        "tern_connections{shard=\"1\"}",
        "tern_messages_in_total",
        "tern_messages_stored_total",
        "tern_deliveries_total",
        "tern_notices_total",
        "tern_rate_limited_total",
        "tern_fanout_size_bucket{le=\"+Inf\"}",
        "tern_fanout_size_count",
        "tern_storage_batch_size_bucket{le=\"+Inf\"}",
        "tern_storage_commit_seconds_bucket{le=\"+Inf\"}",
        "tern_webhook_queue_depth",
        "tern_webhook_delivered_total",
        "tern_webhook_dropped_total",
        "tern_webhook_failed_total",
    ] {
        assert!(metric(&m0, series).is_some(), "{series} missing:\n{m0}");
    }
    for family in [
        "tern_connections",
        "tern_fanout_size",
        "tern_http_requests_total",
    ] {
        assert!(
            m0.lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} "))),
            "no # TYPE for {family}"
        );
    }
    let conns0 = metric_sum(&m0, "tern_connections");

    // Connections raise the gauge.
    s.put_users(&["mt1", "mt2"]).await;
    s.put_group("mt", None, &["mt1", "mt2"]).await;
    let mut a1 = s.login(Subprotocol::Json, "mt1", "phone").await;
    let mut a2 = s.login(Subprotocol::Rkyv, "mt1", "tablet").await;
    let mut b1 = s.login(Subprotocol::Json, "mt2", "phone").await;
    let mut b2 = s.login(Subprotocol::Rkyv, "mt2", "tablet").await;
    let m1 = poll_metrics(&s, |m| metric_sum(m, "tern_connections") >= conns0 + 4.0).await;

    // Three group sends: counted in, stored, delivered to 3 devices each.
    for k in 0..3 {
        a1.send_text(&format!("mt{k}"), "group:mt", "x").await;
    }
    for c in [&mut a2, &mut b1, &mut b2] {
        // The 1501 came before they connected: seqs 2..=4.
        let got = c.entries("group:mt", 3, REPLY).await;
        assert_eq!(got.last().map(|e| e["seq"].clone()), Some(json!(4)));
        c.ack("group:mt", 4).await;
    }
    let delta = |m: &str, series: &str| {
        metric(m, series).unwrap_or(f64::NAN) - metric(&m1, series).unwrap_or(f64::NAN)
    };
    let m2 = poll_metrics(&s, |m| delta(m, "tern_deliveries_total") >= 9.0).await;
    assert!(
        delta(&m2, "tern_messages_in_total") >= 3.0,
        "messages_in:\n{m2}"
    );
    assert!(
        delta(&m2, "tern_messages_stored_total") >= 3.0,
        "stored:\n{m2}"
    );
    assert!(
        delta(&m2, "tern_fanout_size_count") >= 3.0,
        "fanout count:\n{m2}"
    );
    assert!(
        delta(&m2, "tern_storage_batch_size_count") >= 1.0,
        "batches:\n{m2}"
    );
    assert!(
        delta(&m2, "tern_storage_commit_seconds_count") >= 1.0,
        "commits:\n{m2}"
    );
    // Histograms are cumulative and end in +Inf = count.
    for h in [
        "tern_fanout_size",
        "tern_storage_batch_size",
        "tern_storage_commit_seconds",
    ] {
        let buckets: Vec<f64> = m2
            .lines()
            .filter(|l| l.starts_with(&format!("{h}_bucket{{")))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
            .collect();
        assert!(buckets.len() >= 2, "{h}: buckets {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{h} not cumulative: {buckets:?}"
        );
        let inf = metric(&m2, &format!("{h}_bucket{{le=\"+Inf\"}}"));
        assert_eq!(
            inf,
            metric(&m2, &format!("{h}_count")),
            "{h}: +Inf vs count"
        );
    }
    // HTTP answers are counted by code.
    assert!(
        metric(&m2, "tern_http_requests_total{code=\"200\"}").unwrap_or(0.0) >= 1.0,
        "http 200s:\n{m2}"
    );

    // Closing lowers the gauge again.
    for c in [a1, a2, b1, b2] {
        c.close().await;
    }
    poll_metrics(&s, |m| metric_sum(m, "tern_connections") <= conns0).await;
}

/// `/metrics` until `ok` holds (bounded by [`REPLY`]).
async fn poll_metrics(s: &Server, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + REPLY;
    loop {
        let m = s.metrics_text().await;
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never got there:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every `/v1` route of PROTOCOL.md with its methods (OpenAPI path syntax).
const V1_ROUTES: [(&str, &[&str]); 10] = [
    ("/v1/users/{user}", &["put", "get", "delete"]),
    ("/v1/users/{user}/tokens", &["post"]),
    ("/v1/users/{user}/presence", &["get"]),
    ("/v1/users/{user}/kick", &["post"]),
    ("/v1/groups/{group}", &["put", "get", "delete"]),
    ("/v1/groups/{group}/members", &["post", "get"]),
    ("/v1/messages", &["post"]),
    ("/v1/conversations/{conv}/messages", &["get"]),
    ("/healthz", &["get"]),
    ("/metrics", &["get"]),
];

#[tokio::test]
async fn openapi_documents_every_route() {
    let s = Server::start(&[]).await;
    let (st, doc) = s.request_raw("GET", "/openapi.json", None, None).await;
    assert_eq!(st, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not OpenAPI 3: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in V1_ROUTES {
        let p = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} not documented; paths: {:?}", paths.keys()));
        for m in methods {
            let op = &p[*m];
            assert!(op.is_object(), "{m} {path} not documented: {p}");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {path} without responses"
            );
        }
    }
    // And nothing under /v1 that does not exist.
    for p in paths.keys().filter(|p| p.starts_with("/v1")) {
        assert!(
            V1_ROUTES.iter().any(|(r, _)| r == p),
            "documented route {p} is not in PROTOCOL.md"
        );
    }
}

/// Group ids that PROTOCOL.md "Identifiers" rejects, URL-encoded.
const BAD_GROUP_IDS: [&str; 4] = [
    "bad!id",
    "sp%20ace",
    "%C3%BC",
    "gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
];

#[tokio::test]
async fn bad_ids_are_400() {
    let s = Server::start(&[]).await;
    s.put_user("bi1").await;
    assert_eq!(BAD_GROUP_IDS[3].len(), 66);
    for g in BAD_GROUP_IDS {
        let routes: [(&str, String, Option<Value>); 5] = [
            (
                "PUT",
                format!("/v1/groups/{g}"),
                Some(json!({ "members": ["bi1"] })),
            ),
            ("GET", format!("/v1/groups/{g}"), None),
            ("DELETE", format!("/v1/groups/{g}"), None),
            ("GET", format!("/v1/groups/{g}/members"), None),
            (
                "POST",
                format!("/v1/groups/{g}/members"),
                Some(json!({ "add": ["bi1"] })),
            ),
        ];
        for (m, path, body) in routes {
            let (st, v) = s.request(m, &path, body).await;
            assert_eq!(st, 400, "{m} {path}: {v}");
            assert_error(&v, None, &path);
        }
    }
    // 64 bytes is the longest good id.
    let long = "g".repeat(64);
    let (st, v) = s
        .request("PUT", &format!("/v1/groups/{long}"), Some(json!({})))
        .await;
    assert_eq!(st, 200, "{v}");
    // A bad member id refuses the whole PUT; nothing is created.
    let (st, v) = s
        .request(
            "PUT",
            "/v1/groups/okgroup",
            Some(json!({ "members": ["bi1", "no way"] })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = s.request("GET", "/v1/groups/okgroup", None).await;
    assert_eq!(st, 404, "refused PUT created the group");
    // Wrong JSON types.
    for body in [json!({ "members": "bi1" }), json!({ "name": 5 }), json!([])] {
        let (st, v) = s
            .request("PUT", "/v1/groups/okgroup", Some(body.clone()))
            .await;
        assert_eq!(st, 400, "{body}: {v}");
    }
}

#[tokio::test]
async fn group_routes_need_the_api_key() {
    let s = Server::start(&[]).await;
    s.put_user("ak1").await;
    s.put_group("ak", None, &["ak1"]).await;
    let routes: [(&str, &str, Option<Value>); 5] = [
        ("PUT", "/v1/groups/ak", Some(json!({ "name": "x" }))),
        ("GET", "/v1/groups/ak", None),
        ("DELETE", "/v1/groups/ak", None),
        ("GET", "/v1/groups/ak/members", None),
        (
            "POST",
            "/v1/groups/ak/members",
            Some(json!({ "remove": ["ak1"] })),
        ),
    ];
    for (m, path, body) in routes {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        let (st, v) = s.request_raw(m, path, None, bytes.clone()).await;
        assert_eq!(st, 401, "{m} {path} without key: {v}");
        assert_error(&v, None, "no key");
        let (st, v) = s.request_raw(m, path, Some("wrong-key-123"), bytes).await;
        assert_eq!(st, 403, "{m} {path} wrong key: {v}");
        assert_error(&v, None, "wrong key");
    }
    // Nothing of that took effect.
    let (st, v) = s.request("GET", "/v1/groups/ak", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], Value::Null, "{v}");
    assert_eq!(v["members_count"], 1, "{v}");
}
