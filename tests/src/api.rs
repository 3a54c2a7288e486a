//! A blocking client for the collector's JSON API, and helpers for the events it returns.
use crate::*;

/// A blocking client for the collector's JSON API.
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
    pub fn new(base: &str, token: &str, ca_pem: &[u8]) -> Self {
        let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA PEM");
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .use_rustls_tls()
            // Collectors are restarted mid-test: never reuse a connection to a dead one.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            base: base.to_string(),
            token: token.to_string(),
            client,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// GET `path` (under the base URL); returns (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.send(
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
        )
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.client
                .put(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body),
        )
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.send(
            self.client
                .delete(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
        )
    }

    /// GET `path` as a signed-in browser would (its session cookie, no token); returns
    /// (status, body text).
    pub fn get_with_cookie(&self, path: &str, cookie: &str) -> (u16, String) {
        self.rt.block_on(async {
            let resp = self
                .client
                .get(format!("{}{path}", self.base))
                .header(reqwest::header::COOKIE, cookie)
                .send()
                .await
                .expect("page request");
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        })
    }

    /// The same API as another token holder (a role's API token).
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            base: self.base.clone(),
            token: token.to_string(),
            client: self.client.clone(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        self.rt.block_on(async {
            let resp = req.send().await.expect("API request");
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    }

    /// One device as the API lists it, following the device list's pages.
    pub fn device(&self, id: &str) -> Option<Value> {
        let mut cursor = String::new();
        loop {
            let (st, v) = self.get(&format!("/api/v1/devices?limit=1000&cursor={cursor}"));
            assert_eq!(st, 200, "{v}");
            let found = v["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id);
            if let Some(d) = found {
                return Some(d.clone());
            }
            match v["next"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return None,
            }
        }
    }

    /// Every event of a device, following cursors, newest first.
    pub fn all_events(&self, device: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let (st, v) = self.get(&format!(
                "/api/v1/events?device={device}&limit=1000&cursor={cursor}"
            ));
            assert_eq!(st, 200, "{v}");
            out.extend(v["events"].as_array().unwrap().iter().cloned());
            match v["next"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return out,
            }
        }
    }
}

/// Sequence numbers of events, sorted; panics if any appears twice.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    s.sort_unstable();
    let before = s.len();
    s.dedup();
    assert_eq!(before, s.len(), "an event was stored twice");
    s
}
