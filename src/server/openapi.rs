//! The OpenAPI 3.1 document served at `/openapi.json`, hand-written from [`ROUTES`]; a test
//! checks that the router answers exactly these routes.

use serde_json::{json, Map, Value};

/// Every route: (method, path, summary, needs a key).
pub const ROUTES: &[(&str, &str, &str, bool)] = &[
    ("post", "/v1/prompt-injections", "Create a prompt injection", true),
    ("post", "/api/v2/agent-assist/prompt-injections", "Create a prompt injection (the tutorial's path)", true),
    ("get", "/v1/prompt-injections/{id}", "An injection's status and timeline", true),
    ("delete", "/v1/prompt-injections/{id}", "Cancel (armed, queued) or withdraw (scheduled, shown)", true),
    ("post", "/v1/prompt-injections/{id}/fire", "Fire an armed injection (admin)", true),
    ("get", "/v1/conversations/{id}/prompts", "A conversation's active, queued and armed prompts", true),
    ("get", "/v1/conversations/{id}/stream", "The panel channel as server-sent events (Last-Event-ID resumes)", true),
    ("get", "/panel", "The agent's prompt panel page (Genesys Cloud Interaction Widget)", false),
    ("get", "/panel/assets/panel.js", "The panel page's script", false),
    ("get", "/panel/assets/panel.css", "The panel page's styles", false),
    ("get", "/panel/config", "Panel sign-in settings for the page (OAuth client id, authorize URL)", false),
    (
        "post",
        "/panel/session",
        "Exchange the agent's Genesys token for a panel session (Bearer: the Genesys token)",
        false,
    ),
    (
        "get",
        "/panel/conversations/{id}/stream",
        "The conversation's prompts as server-sent events (Bearer: a panel session)",
        false,
    ),
    (
        "post",
        "/panel/injections/{id}/engagements",
        "Report viewed, clicked, dismissed or feedback (Bearer: a panel session)",
        false,
    ),
    ("get", "/v1/adoption", "Adoption figures (admin): from, to, tz, groupBy, copilot", true),
    ("get", "/v1/adoption/report", "The adoption report body with SVG charts, HTML (admin)", true),
    ("get", "/adoption", "The adoption dashboard page (asks for an admin key)", false),
    ("get", "/healthz", "The process is up", false),
    ("get", "/readyz", "The store is writable and the server is not shutting down", false),
    ("get", "/metrics", "Prometheus metrics (any key; a `metrics` key may do only this)", true),
    ("get", "/openapi.json", "This document", false),
];

/// The document.
pub fn document() -> Value {
    let error = json!({ "$ref": "#/components/schemas/Error" });
    let mut paths = Map::new();
    for (method, path, summary, auth) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": summary,
            "responses": {
                "default": { "description": "error", "content": { "application/json": { "schema": error } } }
            }
        });
        if path.contains("{id}") {
            op["parameters"] = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }]);
        }
        if path.starts_with("/v1/adoption") {
            let p = |name: &str, description: &str| json!({ "name": name, "in": "query", "description": description, "schema": { "type": "string" } });
            op["parameters"] = json!([
                p(
                    "from",
                    "start (inclusive): 2026-03-01, 2026-03-01T08:00 (in tz) or RFC 3339; default 7 days before to"
                ),
                p("to", "end (exclusive), same forms; default now"),
                p("tz", "UTC offset days are cut at: Z, +02:00, -05:30; default Z"),
                p("groupBy", "comma list of prompt, rule, queue, agent, day; default prompt"),
                p("copilot", "true adds Agent Copilot's figures (the service needs Genesys)"),
            ]);
        }
        if *auth {
            op["security"] = json!([{ "apiKey": [] }]);
        } else if *path == "/panel/session" {
            op["security"] = json!([{ "genesysUserToken": [] }]);
        } else if path.starts_with("/panel/conversations/") || path.starts_with("/panel/injections/") {
            op["security"] = json!([{ "panelSession": [] }]);
        }
        if *method == "post" && path.ends_with("prompt-injections") {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": crate::contract::json_schema() } }
            });
            op["parameters"] = json!([{ "name": "Idempotency-Key", "in": "header", "schema": { "type": "string", "maxLength": 255 } }]);
        }
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "gc-assist", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": { "type": "http", "scheme": "bearer" },
                "genesysUserToken": {
                    "type": "http", "scheme": "bearer",
                    "description": "The agent's Genesys Cloud access token (implicit grant), exchanged for a panel session"
                },
                "panelSession": {
                    "type": "http", "scheme": "bearer",
                    "description": "A panel session from POST /panel/session, scoped to one agent and conversation"
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": { "type": "string" },
                        "message": { "type": "string" },
                        "issues": { "type": "array" },
                        "retryAfterMs": { "type": "integer" }
                    }
                }
            }
        }
    })
}
