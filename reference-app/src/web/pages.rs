//! The HTML pages (askama templates in `templates/`).

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage;

#[derive(Template)]
#[template(path = "inventory.html")]
struct InventoryPage {
    items: Vec<String>,
    rows: Vec<(String, Vec<i64>)>,
    totals: Vec<i64>,
    updated_at: String,
    initial_json: String,
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

/// `GET /inventory`: stock per item per location, kept fresh by server-sent events.
pub async fn inventory_page(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.inventory.current();
    let model = &snapshot.model;
    let mut items: Vec<String> = model["totals"]
        .as_object()
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    items.sort();
    let rows = model["locations"]
        .as_object()
        .map(|locations| {
            locations
                .iter()
                .map(|(location, stock)| {
                    (
                        location.clone(),
                        items
                            .iter()
                            .map(|i| stock[i].as_i64().unwrap_or(0))
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let totals = items
        .iter()
        .map(|i| model["totals"][i].as_i64().unwrap_or(0))
        .collect();
    render(InventoryPage {
        items,
        rows,
        totals,
        updated_at: model["updatedAt"].as_str().unwrap_or("never").to_string(),
        // NB: `</` cannot end the script element it is embedded in.
        initial_json: snapshot.json.replace("</", "<\\/"),
    })
}
