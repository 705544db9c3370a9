//! The HTML pages (askama templates in `templates/`).

use std::sync::Arc;

use askama::Template;
use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::inventory_view::{Paging, Totals};

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage;

#[derive(Template)]
#[template(path = "inventory.html")]
struct InventoryPage {
    totals: Totals,
    updated_at: String,
    lq: String,
    lpage: usize,
    locations: Pager<LocationRow>,
    selected_name: Option<String>,
    q: String,
    items: Pager<(String, i64)>,
    initial_json: String,
}

struct LocationRow {
    location: String,
    items: usize,
    quantity: i64,
    updated_at: String,
    link: String,
    current: bool,
}

/// One page of rows, what it shows of how many, and links to its neighbours.
struct Pager<T> {
    rows: Vec<T>,
    shown: String,
    prev: Option<String>,
    next: Option<String>,
}

impl<T> Pager<T> {
    /// `link(page)` is the URL of another page.
    fn new(rows: Vec<T>, paging: &Paging, matching: usize, link: impl Fn(usize) -> String) -> Self {
        let first = (paging.page - 1) * paging.page_size;
        let shown = if rows.is_empty() {
            format!("0 of {matching}")
        } else {
            format!("{}–{} of {matching}", first + 1, first + rows.len())
        };
        Self {
            shown,
            prev: (paging.page > 1).then(|| link(paging.page - 1)),
            next: (first + rows.len() < matching).then(|| link(paging.page + 1)),
            rows,
        }
    }
}

/// `/inventory?` with these parameters (empty ones left out).
fn dashboard_link(params: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if !v.is_empty() {
            query.append_pair(k, v);
        }
    }
    format!("/inventory?{}", query.finish())
}

fn render(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("cannot render a page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// `GET /`: the registration form.
pub async fn register_page() -> Response {
    render(RegisterPage)
}

/// `GET /inventory?location=&q=&page=&lq=&lpage=`: the shop's totals, a page of locations
/// (`lq`, `lpage`) and a page of one location's items (`q`, `page`; the first location unless
/// `location` is given), kept fresh by server-sent events.
pub async fn inventory_page(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let item_params = params.clone();
    let location_params: HashMap<String, String> = [("lq", "q"), ("lpage", "page")]
        .into_iter()
        .filter_map(|(from, to)| params.get(from).map(|v| (to.to_string(), v.clone())))
        .collect();
    let (item_paging, location_paging) =
        match (Paging::parse(&item_params), Paging::parse(&location_params)) {
            (Ok(items), Ok(locations)) => (items, locations),
            (items, locations) => {
                let mut errors = items.err().unwrap_or_default();
                for (field, reason) in locations.err().unwrap_or_default() {
                    let field = if field == "q" {
                        "lq".into()
                    } else {
                        format!("l{field}")
                    };
                    errors.insert(field, reason);
                }
                let text: Vec<String> = errors.iter().map(|(f, r)| format!("{f} {r}")).collect();
                return (
                    StatusCode::BAD_REQUEST,
                    format!("bad parameters: {}", text.join("; ")),
                )
                    .into_response();
            }
        };
    let view = state.inventory.current();
    let selected_name = params
        .get("location")
        .cloned()
        .or_else(|| view.first_location().map(String::from));
    let lq = params.get("lq").cloned().unwrap_or_default();
    let lpage = location_paging.page;
    let page = view.locations_page(&location_paging);
    let lpage_text = lpage.to_string();
    let rows = page
        .locations
        .into_iter()
        .map(|l| LocationRow {
            link: dashboard_link(&[
                ("location", &l.location),
                ("lq", &lq),
                ("lpage", &lpage_text),
            ]),
            current: Some(&l.location) == selected_name.as_ref(),
            location: l.location,
            items: l.items,
            quantity: l.quantity,
            updated_at: l.updated_at.unwrap_or_default(),
        })
        .collect();
    let locations = Pager::new(rows, &location_paging, page.matching, |n| {
        dashboard_link(&[
            ("location", selected_name.as_deref().unwrap_or_default()),
            ("lq", &lq),
            ("lpage", &n.to_string()),
        ])
    });
    let q = params.get("q").cloned().unwrap_or_default();
    let (item_rows, matching) = match selected_name
        .as_deref()
        .and_then(|name| view.location_page(name, &item_paging))
    {
        Some(p) => (
            p.stock.into_iter().map(|s| (s.item, s.quantity)).collect(),
            p.matching,
        ),
        None => (Vec::new(), 0),
    };
    let items = Pager::new(item_rows, &item_paging, matching, |n| {
        dashboard_link(&[
            ("location", selected_name.as_deref().unwrap_or_default()),
            ("q", &q),
            ("page", &n.to_string()),
            ("lq", &lq),
            ("lpage", &lpage_text),
        ])
    });
    let initial = serde_json::json!({
        "version": view.version,
        "location": selected_name,
        "q": q,
        "page": item_paging.page,
        "lq": lq,
        "lpage": lpage,
    });
    render(InventoryPage {
        totals: view.totals,
        updated_at: view.updated_at.clone().unwrap_or_else(|| "never".into()),
        lq: lq.clone(),
        lpage,
        locations,
        selected_name: selected_name.clone(),
        q: q.clone(),
        items,
        // NB: `</` cannot end the script element it is embedded in.
        initial_json: initial.to_string().replace("</", "<\\/"),
    })
}
