//! A small W3C WebDriver client over reqwest + serde_json: just what the
//! browser test needs (session, navigation, elements, page text,
//! screenshots), against chromedriver driving headless Chromium.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver failure: the driver's error code and message, or a
/// transport problem.
#[derive(Debug)]
pub(crate) struct WebDriverError(String);

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebDriverError {}

pub(crate) type Result<T> = std::result::Result<T, WebDriverError>;

fn error(message: impl Into<String>) -> WebDriverError {
    WebDriverError(message.into())
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub(crate) struct Element(String);

/// One browser session.
#[derive(Debug)]
pub(crate) struct WebDriver {
    http: reqwest::Client,
    session_url: String,
}

/// The options for Chromium: headless, quiet, a fresh profile.
pub(crate) fn chrome_capabilities(binary: &Path, user_data_dir: &Path) -> Value {
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--window-size=1280,1000".to_owned(),
        format!("--user-data-dir={}", user_data_dir.display()),
    ];
    json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                "goog:chromeOptions": {
                    "binary": binary.display().to_string(),
                    "args": args,
                },
            }
        }
    })
}

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut request = http.request(method.clone(), url);
    // chromedriver wants a JSON body (even `{}`) on every POST.
    if method == Method::POST {
        request = request.json(&body.unwrap_or_else(|| json!({})));
    }
    let response = request
        .send()
        .await
        .map_err(|e| error(format!("{method} {url}: {e}")))?;
    let status = response.status();
    let value: Value = response
        .json()
        .await
        .map_err(|e| error(format!("{method} {url}: bad JSON answer: {e}")))?;
    let value = value.get("value").cloned().unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let code = value["error"].as_str().unwrap_or("unknown error");
    let message = value["message"].as_str().unwrap_or("");
    let first_line = message.lines().next().unwrap_or("");
    Err(error(format!("{method} {url}: {code}: {first_line}")))
}

impl WebDriver {
    /// Opens a session on the driver at `driver_url` (e.g.
    /// `http://127.0.0.1:<port>`).
    pub(crate) async fn new_session(driver_url: &str, capabilities: Value) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| error(e.to_string()))?;
        let value = call(
            &http,
            Method::POST,
            &format!("{driver_url}/session"),
            Some(capabilities),
        )
        .await?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| error(format!("new session: no sessionId in {value}")))?;
        let driver = Self {
            http,
            session_url: format!("{driver_url}/session/{id}"),
        };
        driver
            .post(
                "timeouts",
                json!({"implicit": 0, "pageLoad": 30_000, "script": 10_000}),
            )
            .await?;
        Ok(driver)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}/{path}", self.session_url);
        call(&self.http, Method::GET, &url, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/{path}", self.session_url);
        call(&self.http, Method::POST, &url, Some(body)).await
    }

    /// Navigates to `url` and waits for the page to load.
    pub(crate) async fn goto(&self, url: &str) -> Result<()> {
        self.post("url", json!({ "url": url })).await.map(drop)
    }

    /// The address of the current page.
    pub(crate) async fn current_url(&self) -> Result<String> {
        let value = self.get("url").await?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| error("current URL is not a string"))
    }

    /// The first element matching a CSS selector.
    pub(crate) async fn find(&self, css: &str) -> Result<Element> {
        let value = self
            .post("element", json!({"using": "css selector", "value": css}))
            .await
            .map_err(|e| error(format!("find {css:?}: {e}")))?;
        element_of(&value)
    }

    /// Every element matching a CSS selector.
    pub(crate) async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let value = self
            .post("elements", json!({"using": "css selector", "value": css}))
            .await?;
        value
            .as_array()
            .ok_or_else(|| error("elements: not an array"))?
            .iter()
            .map(element_of)
            .collect()
    }

    /// Clicks an element (and waits for a navigation it starts).
    pub(crate) async fn click(&self, element: &Element) -> Result<()> {
        self.post(&format!("element/{}/click", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Clears a text input.
    pub(crate) async fn clear(&self, element: &Element) -> Result<()> {
        self.post(&format!("element/{}/clear", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into an element.
    pub(crate) async fn send_keys(&self, element: &Element, text: &str) -> Result<()> {
        self.post(
            &format!("element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// The rendered text of an element.
    pub(crate) async fn text(&self, element: &Element) -> Result<String> {
        let value = self.get(&format!("element/{}/text", element.0)).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// The rendered text of the whole page.
    pub(crate) async fn page_text(&self) -> Result<String> {
        let body = self.find("body").await?;
        self.text(&body).await
    }

    /// The page's HTML as the browser holds it now.
    pub(crate) async fn source(&self) -> Result<String> {
        let value = self.get("source").await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// A PNG of the viewport.
    pub(crate) async fn screenshot(&self) -> Result<Vec<u8>> {
        let value = self.get("screenshot").await?;
        let encoded = value
            .as_str()
            .ok_or_else(|| error("screenshot: not a string"))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| error(format!("screenshot: {e}")))
    }

    /// Runs `script` (a function body; `return` gives the value, the
    /// arguments are `arguments[0]`, …) in the page and returns its value
    /// as JSON.
    pub(crate) async fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.post("execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Resizes the window (the layout viewport follows in headless mode).
    pub(crate) async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.post("window/rect", json!({ "width": width, "height": height }))
            .await
            .map(drop)
    }

    /// Reloads the current page, as the reload button does.
    pub(crate) async fn refresh(&self) -> Result<()> {
        self.post("refresh", json!({})).await.map(drop)
    }

    /// Ends the session (the browser quits).
    pub(crate) async fn delete(self) -> Result<()> {
        call(&self.http, Method::DELETE, &self.session_url, None)
            .await
            .map(drop)
    }
}

fn element_of(value: &Value) -> Result<Element> {
    value[ELEMENT_KEY]
        .as_str()
        .map(|id| Element(id.to_owned()))
        .ok_or_else(|| error(format!("not an element reference: {value}")))
}
