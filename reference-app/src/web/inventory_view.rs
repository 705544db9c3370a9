//! The web role's view of the partitioned inventory read model: per-location totals, pages of
//! locations and of one location's items (searched and paged server side), and the
//! differences between two versions (what the live updates send).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::inventory::{Partition, layout};
use crate::messages::FieldErrors;

/// Rows in a page unless asked otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most rows in a page.
pub const MAX_PAGE_SIZE: usize = 200;
/// Longest search text.
const MAX_QUERY: usize = 200;
/// Most changed pairs in one live update; past this it says `truncated` and clients re-read
/// what they show.
pub const MAX_DELTA_PAIRS: usize = 500;

/// A partition as loaded, with the ETag it had.
#[derive(Debug)]
pub struct Loaded {
    /// ETag of the blob.
    pub etag: String,
    /// Its content.
    pub partition: Partition,
}

/// One location at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationSummary {
    /// Its name.
    pub location: String,
    /// Items (distinct) stocked there.
    pub items: usize,
    /// Their quantities added up.
    pub quantity: i64,
    /// When its partition was last written.
    pub updated_at: Option<String>,
    /// The version of its partition.
    pub version: u64,
}

/// The whole shop at a glance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Locations.
    pub locations: usize,
    /// (location, item) pairs.
    pub items: usize,
    /// Quantities added up.
    pub quantity: i64,
}

/// One version of the read model, as the web role serves it.
#[derive(Debug, Default)]
pub struct InventoryView {
    /// Blob name -> content, for every blob listed (split ones, and halves of lost splits
    /// that no pointer leads to, included).
    pub partitions: BTreeMap<String, Arc<Loaded>>,
    /// Partition root blob -> what its tree of blobs holds.
    roots: BTreeMap<String, Tree>,
    /// Location -> its summary and items (merged over the blobs of its partition).
    locations: BTreeMap<String, Located>,
    /// The sum of the live blobs' versions: grows with every write, the same in every replica.
    pub version: u64,
    /// The latest write.
    pub updated_at: Option<String>,
    /// Totals over all locations.
    pub totals: Totals,
}

/// Search and paging parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paging {
    /// Lower-cased search text (empty: everything).
    pub query: String,
    /// 1-based.
    pub page: usize,
    /// Rows per page.
    pub page_size: usize,
}

impl Default for Paging {
    fn default() -> Self {
        Self {
            query: String::new(),
            page: 1,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

impl Paging {
    /// Reads `q`, `page` and `pageSize` from a query string's parameters.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut paging = Self::default();
        if let Some(q) = params.get("q") {
            if q.chars().count() > MAX_QUERY {
                errors.insert(
                    "q".into(),
                    format!("must be at most {MAX_QUERY} characters"),
                );
            }
            paging.query = q.trim().to_lowercase();
        }
        let mut number = |name: &str, max: usize, into: &mut usize| {
            if let Some(text) = params.get(name) {
                match text.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => *into = n,
                    _ => {
                        errors.insert(
                            name.into(),
                            format!("must be a whole number from 1 to {max}"),
                        );
                    }
                }
            }
        };
        number("page", 1_000_000, &mut paging.page);
        number("pageSize", MAX_PAGE_SIZE, &mut paging.page_size);
        if errors.is_empty() {
            Ok(paging)
        } else {
            Err(errors)
        }
    }

    fn matches(&self, name: &str) -> bool {
        self.query.is_empty() || name.to_lowercase().contains(&self.query)
    }

    /// The rows of this page among `rows` that match; and how many match.
    fn page<'a, T: 'a>(
        &self,
        rows: impl Iterator<Item = (&'a str, T)>,
    ) -> (Vec<(&'a str, T)>, usize) {
        let skip = (self.page - 1).saturating_mul(self.page_size);
        let mut matching = 0;
        let mut out = Vec::new();
        for (name, row) in rows {
            if !self.matches(name) {
                continue;
            }
            if matching >= skip && out.len() < self.page_size {
                out.push((name, row));
            }
            matching += 1;
        }
        (out, matching)
    }
}

/// A page of locations (`GET /api/inventory`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationsPage {
    /// The view's version.
    pub version: u64,
    /// The latest write.
    pub updated_at: Option<String>,
    /// The whole shop.
    pub totals: Totals,
    /// The search text.
    pub query: String,
    /// This page (1-based).
    pub page: usize,
    /// Rows per page.
    pub page_size: usize,
    /// Locations matching the search.
    pub matching: usize,
    /// This page of them.
    pub locations: Vec<LocationSummary>,
}

/// One item's stock at a location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemStock {
    /// The item.
    pub item: String,
    /// How many.
    pub quantity: i64,
}

/// A page of one location's items (`GET /api/inventory/locations/{location}`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationPage {
    /// The location at a glance (its version is its partition's).
    #[serde(flatten)]
    pub summary: LocationSummary,
    /// The search text.
    pub query: String,
    /// This page (1-based).
    pub page: usize,
    /// Rows per page.
    pub page_size: usize,
    /// Items matching the search.
    pub matching: usize,
    /// This page of them.
    pub stock: Vec<ItemStock>,
}

/// What changed between two versions (one live update).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// The new version.
    pub version: u64,
    /// The latest write.
    pub updated_at: Option<String>,
    /// The whole shop.
    pub totals: Totals,
    /// Locations whose totals changed (gone ones with no items).
    pub locations: Vec<LocationSummary>,
    /// Pairs whose quantity changed (gone ones with 0), at most [`MAX_DELTA_PAIRS`].
    pub changes: Vec<PairChange>,
    /// True when more pairs changed than are listed.
    pub truncated: bool,
}

/// One pair's new quantity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PairChange {
    /// Where.
    pub location: String,
    /// What.
    pub item: String,
    /// How many now.
    pub quantity: i64,
}

/// What one partition's tree of blobs (its root, and the halves of its splits) holds.
#[derive(Clone, Debug, Default)]
struct Tree {
    /// The sum of its live blobs' versions.
    version: u64,
    /// The latest write among them.
    updated_at: Option<String>,
    /// Its locations.
    locations: Vec<String>,
}

/// One location's summary and items.
#[derive(Clone, Debug)]
struct Located {
    summary: LocationSummary,
    items: Arc<BTreeMap<String, i64>>,
}

/// Follows `root`'s split pointers through `blobs`: its version, latest write, and the stock
/// of its live blobs merged per location. (A half not loaded yet counts as empty.)
fn walk(
    blobs: &BTreeMap<String, Arc<Loaded>>,
    root: &str,
) -> (u64, Option<String>, BTreeMap<String, BTreeMap<String, i64>>) {
    let (mut version, mut updated_at, mut stock) = (0, None, BTreeMap::new());
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        let Some(loaded) = blobs.get(&name) else {
            continue;
        };
        let part = &loaded.partition;
        version += part.version;
        updated_at = updated_at.max(part.updated_at.clone());
        match &part.split {
            Some(children) => todo.extend(children.iter().cloned()),
            None => {
                for (location, items) in &part.stock {
                    let merged: &mut BTreeMap<String, i64> =
                        stock.entry(location.clone()).or_default();
                    merged.extend(items.iter().map(|(i, q)| (i.clone(), *q)));
                }
            }
        }
    }
    (version, updated_at, stock)
}

impl InventoryView {
    /// The next version: `changed` blobs (re)loaded, `gone` ones dropped; and what changed.
    pub fn next(
        &self,
        changed: Vec<(String, Arc<Loaded>)>,
        gone: &[String],
    ) -> (InventoryView, Delta) {
        let mut partitions = self.partitions.clone();
        let mut touched_roots = BTreeSet::new();
        for (name, loaded) in changed {
            touched_roots.extend(layout::root_of(&name));
            partitions.insert(name, loaded);
        }
        for name in gone {
            touched_roots.extend(layout::root_of(name));
            partitions.remove(name);
        }
        let mut roots = self.roots.clone();
        let mut locations = self.locations.clone();
        let mut delta = Delta::default();
        let mut touched = BTreeSet::new();
        let nothing = BTreeMap::new();
        for root in touched_roots {
            let (version, updated_at, stock) = walk(&partitions, &root);
            let before = roots.remove(&root).unwrap_or_default();
            for location in &before.locations {
                if !stock.contains_key(location) {
                    locations.remove(location);
                    touched.insert(location.clone());
                }
            }
            for (location, items) in &stock {
                let old = locations.get(location).map_or(&nothing, |l| &*l.items);
                for (item, qty) in items {
                    if old.get(item) != Some(qty) {
                        delta.record(location, item, *qty);
                    }
                }
                for (item, qty) in old {
                    if !items.contains_key(item) && *qty != 0 {
                        delta.record(location, item, 0);
                    }
                }
            }
            let names: Vec<String> = stock.keys().cloned().collect();
            for (location, items) in stock {
                let summary = LocationSummary {
                    location: location.clone(),
                    items: items.len(),
                    quantity: items.values().sum(),
                    updated_at: updated_at.clone(),
                    version,
                };
                if locations.get(&location).map(|l| &l.summary) != Some(&summary) {
                    touched.insert(location.clone());
                }
                locations.insert(
                    location,
                    Located {
                        summary,
                        items: Arc::new(items),
                    },
                );
            }
            if version > 0 {
                roots.insert(
                    root,
                    Tree {
                        version,
                        updated_at,
                        locations: names,
                    },
                );
            }
        }
        let mut view = InventoryView {
            partitions,
            roots,
            locations,
            ..InventoryView::default()
        };
        view.recount();
        delta.version = view.version;
        delta.updated_at = view.updated_at.clone();
        delta.totals = view.totals;
        delta.locations = touched
            .into_iter()
            .map(|location| match view.locations.get(&location) {
                Some(l) => l.summary.clone(),
                None => LocationSummary {
                    location,
                    items: 0,
                    quantity: 0,
                    updated_at: None,
                    version: 0,
                },
            })
            .collect();
        (view, delta)
    }

    fn recount(&mut self) {
        self.version = self.roots.values().map(|t| t.version).sum();
        self.updated_at = self
            .roots
            .values()
            .filter_map(|t| t.updated_at.clone())
            .max();
        self.totals = Totals {
            locations: self.locations.len(),
            items: self.locations.values().map(|l| l.summary.items).sum(),
            quantity: self.locations.values().map(|l| l.summary.quantity).sum(),
        };
    }

    /// A page of locations.
    pub fn locations_page(&self, paging: &Paging) -> LocationsPage {
        let (rows, matching) = paging.page(
            self.locations
                .iter()
                .map(|(name, l)| (name.as_str(), &l.summary)),
        );
        LocationsPage {
            version: self.version,
            updated_at: self.updated_at.clone(),
            totals: self.totals,
            query: paging.query.clone(),
            page: paging.page,
            page_size: paging.page_size,
            matching,
            locations: rows.into_iter().map(|(_, s)| s.clone()).collect(),
        }
    }

    /// A page of `location`'s items; `None` when it has no stock recorded.
    pub fn location_page(&self, location: &str, paging: &Paging) -> Option<LocationPage> {
        let located = self.locations.get(location)?;
        let (rows, matching) = paging.page(located.items.iter().map(|(i, q)| (i.as_str(), *q)));
        Some(LocationPage {
            summary: located.summary.clone(),
            query: paging.query.clone(),
            page: paging.page,
            page_size: paging.page_size,
            matching,
            stock: rows
                .into_iter()
                .map(|(item, quantity)| ItemStock {
                    item: item.to_string(),
                    quantity,
                })
                .collect(),
        })
    }

    /// The first location (the dashboard's default).
    pub fn first_location(&self) -> Option<&str> {
        self.locations.keys().next().map(String::as_str)
    }
}

impl Delta {
    fn record(&mut self, location: &str, item: &str, quantity: i64) {
        if self.changes.len() < MAX_DELTA_PAIRS {
            self.changes.push(PairChange {
                location: location.to_string(),
                item: item.to_string(),
                quantity,
            });
        } else {
            self.truncated = true;
        }
    }

    /// Whether anything a client shows changed.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty() && self.changes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(version: u64, pairs: &[(&str, &str, i64)]) -> Arc<Loaded> {
        let mut partition = Partition {
            version,
            updated_at: Some(format!("2026-12-03T10:00:{version:02}Z")),
            ..Partition::default()
        };
        for (l, i, q) in pairs {
            partition
                .stock
                .entry(l.to_string())
                .or_default()
                .insert(i.to_string(), *q);
        }
        Arc::new(Loaded {
            etag: format!("e{version}"),
            partition,
        })
    }

    fn paging(query: &str, page: usize, page_size: usize) -> Paging {
        Paging {
            query: query.into(),
            page,
            page_size,
        }
    }

    #[test]
    fn a_delta_has_only_the_pairs_and_locations_that_changed() {
        let start = InventoryView::default();
        let (v1, d1) = start.next(
            vec![
                (
                    layout::blob_name(1),
                    loaded(1, &[("a", "x", 1), ("a", "y", 2)]),
                ),
                (layout::blob_name(2), loaded(3, &[("b", "z", 5)])),
            ],
            &[],
        );
        assert_eq!(d1.changes.len(), 3);
        assert_eq!(v1.version, 4);
        assert_eq!(
            v1.totals,
            Totals {
                locations: 2,
                items: 3,
                quantity: 8
            }
        );
        let (v2, d2) = v1.next(
            vec![(layout::blob_name(1), loaded(2, &[("a", "x", 4)]))],
            &[],
        );
        assert_eq!(
            d2.changes,
            vec![
                PairChange {
                    location: "a".into(),
                    item: "x".into(),
                    quantity: 4
                },
                PairChange {
                    location: "a".into(),
                    item: "y".into(),
                    quantity: 0
                },
            ]
        );
        assert_eq!(d2.locations.len(), 1, "b did not change");
        assert_eq!((d2.locations[0].items, d2.locations[0].quantity), (1, 4));
        assert_eq!(d2.totals.quantity, 9);
        let (v3, d3) = v2.next(vec![], &[layout::blob_name(2)]);
        assert_eq!(d3.locations[0].location, "b");
        assert_eq!(d3.locations[0].items, 0, "a gone location is sent empty");
        assert_eq!(v3.totals.locations, 1);
        assert!(v3.location_page("b", &Paging::default()).is_none());
    }

    #[test]
    fn a_location_split_over_several_blobs_is_one_location() {
        let root = layout::blob_name(9);
        let halves = [
            format!("{}-aaaaaaaa0.json", root.trim_end_matches(".json")),
            format!("{}-aaaaaaaa1.json", root.trim_end_matches(".json")),
        ];
        let (v1, _) = InventoryView::default().next(
            vec![(root.clone(), loaded(1, &[("a", "x", 1), ("a", "y", 2)]))],
            &[],
        );
        let mut pointer = Partition {
            version: 2,
            split: Some(halves.clone()),
            ..Partition::default()
        };
        pointer.updated_at = Some("2026-12-03T10:00:02Z".into());
        let (v2, delta) = v1.next(
            vec![
                (
                    root.clone(),
                    Arc::new(Loaded {
                        etag: "e2".into(),
                        partition: pointer,
                    }),
                ),
                (halves[0].clone(), loaded(1, &[("a", "x", 1)])),
                (halves[1].clone(), loaded(1, &[("a", "y", 5)])),
                // A half of a lost split: no pointer leads to it.
                (
                    format!("{}-bbbbbbbb0.json", root.trim_end_matches(".json")),
                    loaded(1, &[("a", "z", 100)]),
                ),
            ],
            &[],
        );
        let page = v2.location_page("a", &Paging::default()).unwrap();
        let items: Vec<(&str, i64)> = page
            .stock
            .iter()
            .map(|s| (s.item.as_str(), s.quantity))
            .collect();
        assert_eq!(items, vec![("x", 1), ("y", 5)]);
        assert_eq!(v2.totals.quantity, 6);
        assert_eq!(v2.version, 4, "the pointer and its two halves");
        assert_eq!(
            delta.changes,
            vec![PairChange {
                location: "a".into(),
                item: "y".into(),
                quantity: 5
            }],
            "a split alone changes nothing; the adjustment does"
        );
    }

    #[test]
    fn a_big_change_is_truncated_not_sent_whole() {
        let pairs: Vec<(String, String, i64)> = (0..2 * MAX_DELTA_PAIRS)
            .map(|i| ("a".to_string(), format!("i{i}"), 1))
            .collect();
        let borrowed: Vec<(&str, &str, i64)> = pairs
            .iter()
            .map(|(l, i, q)| (l.as_str(), i.as_str(), *q))
            .collect();
        let (_, delta) =
            InventoryView::default().next(vec![(layout::blob_name(0), loaded(1, &borrowed))], &[]);
        assert_eq!(delta.changes.len(), MAX_DELTA_PAIRS);
        assert!(delta.truncated);
    }

    #[test]
    fn pages_search_and_count_matches() {
        let pairs: Vec<(String, String, i64)> = (0..120)
            .map(|i| ("shop".to_string(), format!("pie-{i:03}"), i))
            .collect();
        let borrowed: Vec<(&str, &str, i64)> = pairs
            .iter()
            .map(|(l, i, q)| (l.as_str(), i.as_str(), *q))
            .collect();
        let (view, _) =
            InventoryView::default().next(vec![(layout::blob_name(0), loaded(1, &borrowed))], &[]);
        let page = view.location_page("shop", &paging("", 3, 50)).unwrap();
        assert_eq!(page.matching, 120);
        assert_eq!(page.stock.len(), 20);
        assert_eq!(page.stock[0].item, "pie-100");
        let found = view
            .location_page("shop", &paging("pie-01", 1, 50))
            .unwrap();
        assert_eq!(found.matching, 10);
        let beyond = view.location_page("shop", &paging("", 9, 50)).unwrap();
        assert!(beyond.stock.is_empty());
        let locations = view.locations_page(&paging("SHO".to_lowercase().as_str(), 1, 10));
        assert_eq!(locations.matching, 1);
        assert_eq!(locations.locations[0].quantity, (0..120).sum::<i64>());
    }

    #[test]
    fn bad_paging_names_the_field() {
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let errors = Paging::parse(&params(&[("page", "0"), ("pageSize", "500")])).unwrap_err();
        assert!(errors["page"].contains("from 1"), "{errors:?}");
        assert!(errors["pageSize"].contains("200"), "{errors:?}");
        let ok = Paging::parse(&params(&[("q", " Apple "), ("page", "2")])).unwrap();
        assert_eq!((ok.query.as_str(), ok.page), ("apple", 2));
    }
}
