//! The web console in a real headless Chromium (issue 16), driven over WebDriver
//! (`balut_tests::browser`).

use balut_tests::browser::Browser;

/// The harness itself: a page's console error reaches the browser log the tests read (so
/// "no console errors" is never checked against a log that is always empty).
#[test]
fn the_browser_log_shows_console_errors() {
    let mut browser = Browser::start();
    browser.goto("data:text/html,<title>t</title><script>console.error('boom-from-page')</script>");
    browser.wait("the page's title", "return document.title;", |v| v == "t");
    let log = browser.log();
    assert!(
        log.iter()
            .any(|e| e.is_severe() && e.message.contains("boom-from-page")),
        "{log:#?}"
    );
}
