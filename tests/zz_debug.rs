mod common;
use common::*;
use serde_json::json;
use tern_proto::Subprotocol;
#[tokio::test]
async fn dbg() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let mut c = s.login(Subprotocol::Rkyv, "alice", "phone").await;
    let valid = encode(Subprotocol::Rkyv, &json!({ "type": "sync", "conv": "dm:alice:alice", "after": 0 }));
    let bad: Vec<Vec<u8>> = vec![vec![], vec![0xff; 16], vec![0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03], valid[..valid.len() / 2].to_vec()];
    for b in bad {
        println!("sending {b:?}");
        c.send_raw_binary(b.clone()).await;
        let e = c.next(REPLY).await;
        println!("got {e:?}");
        c.ping().await;
    }
}
