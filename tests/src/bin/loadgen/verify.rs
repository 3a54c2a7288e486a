//! Verifying the store through the API: every device's events listed page by page and each
//! (device, seq) counted against what was sent.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::Args;

/// Lists every device's events through the API and counts each (device, seq) against the
/// `1..=--events` it was sent; returns (lost, duplicated), printing each device that is off.
pub(super) async fn through_api(
    args: &Args,
    agents: &[(PathBuf, String)],
) -> anyhow::Result<(u64, u64)> {
    let verify = Instant::now();
    let ca = std::fs::read(agents[0].0.join("ca.pem"))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .use_rustls_tls()
        .build()?;
    let listing = Arc::new(Semaphore::new(4));
    let mut lists = Vec::new();
    for (_, id) in agents {
        let (client, api, token, id, listing) = (
            client.clone(),
            args.api.trim_end_matches('/').to_string(),
            args.api_token.clone(),
            id.clone(),
            listing.clone(),
        );
        lists.push(tokio::spawn(async move {
            let _permit = listing.acquire_owned().await.expect("semaphore");
            let seqs = list_device_events(&client, &api, &token, &id).await;
            (id, seqs)
        }));
    }
    let (mut lost, mut duplicated, mut listed, mut data) = (0u64, 0u64, 0u64, 0u64);
    for l in lists {
        let (id, listing) = l.await?;
        let (seqs, bytes) = listing.with_context(|| format!("listing device {id}'s events"))?;
        data += bytes;
        listed += seqs.len() as u64;
        let tally = tally_seqs(&seqs, args.events);
        if tally != Tally::default() {
            eprintln!(
                "device {id}: {} lost (first {:?}), {} duplicated, {} outside 1..={}",
                tally.lost, tally.first_lost, tally.duplicated, tally.unexpected, args.events
            );
        }
        lost += tally.lost;
        duplicated += tally.duplicated + tally.unexpected;
    }
    eprintln!(
        "verified {} devices through the API ({listed} events listed, {data} bytes as JSON) in {:.2}s",
        agents.len(),
        verify.elapsed().as_secs_f64()
    );
    Ok((lost, duplicated))
}

/// Every stored sequence number of `device`, as `GET /api/v1/events?device=` lists them,
/// following `next` until the last page.
async fn list_device_events(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    device: &str,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut seqs = Vec::new();
    // The events' own size, as compact JSON: the "data" a store's disk use is compared with.
    let mut bytes = 0u64;
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!("{api}/api/v1/events"))
            .query(&[("device", device), ("limit", "1000"), ("cursor", &cursor)])
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for e in page["events"]
            .as_array()
            .context("no events in the API answer")?
        {
            if e["device_id"].as_str() != Some(device) {
                bail!("the listing for {device} holds another device's event: {e}");
            }
            seqs.push(e["seq"].as_u64().context("an event without a seq")?);
            bytes += e.to_string().len() as u64;
        }
        match page["next"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return Ok((seqs, bytes)),
        }
    }
}

/// What one device's listed sequence numbers say against the `1..=expected` it was sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Sent but not listed.
    lost: u64,
    first_lost: Option<u64>,
    /// Listed more than once (each extra row counts).
    duplicated: u64,
    /// Listed but never sent.
    unexpected: u64,
}

fn tally_seqs(seqs: &[u64], expected: u64) -> Tally {
    let mut seen: HashMap<u64, u64> = HashMap::with_capacity(seqs.len());
    let mut t = Tally::default();
    for &s in seqs {
        if !(1..=expected).contains(&s) {
            t.unexpected += 1;
            continue;
        }
        let n = seen.entry(s).or_default();
        *n += 1;
        if *n > 1 {
            t.duplicated += 1;
        }
    }
    for s in 1..=expected {
        if !seen.contains_key(&s) {
            t.lost += 1;
            t.first_lost.get_or_insert(s);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reveals_what_a_count_cannot() {
        assert_eq!(tally_seqs(&[3, 1, 2], 3), Tally::default());
        // Three rows for three events sent, yet one is listed twice and one missing: a count
        // of rows (or of keys) says all is well.
        let t = tally_seqs(&[1, 2, 2], 3);
        assert_eq!((t.lost, t.first_lost, t.duplicated), (1, Some(3), 1));
        assert_eq!(tally_seqs(&[1, 2, 9], 2).unexpected, 1);
    }
}
