package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// TestBrowserResumesAfterOffline drives the demo page in a real browser: a
// payment made through node B reaches the page on node A, and one made while
// the page is offline arrives once it comes back, resumed from history.
func TestBrowserResumesAfterOffline(t *testing.T) {
	exe := findBrowser(t)
	c := newCluster(t)
	browser := newBrowser(t, exe)
	ctx, cancel := context.WithTimeout(browser, 30*time.Second)
	defer cancel()

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v\npage: %s", what, err, pageText(browser))
		}
	}
	waitFor := func(what, expr string) {
		t.Helper()
		do("wait until "+what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(20*time.Second)))
	}
	statusHas := func(s string) string {
		return `document.querySelector("#status").textContent.includes(` + strconv.Quote(s) + `)`
	}
	balanceIs := func(cents int64) string {
		return `document.querySelector("#balance").dataset.cents === "` + strconv.FormatInt(cents, 10) + `"`
	}
	paidItem := func(order string) string {
		return `document.querySelector('#payments li[data-order="` + order + `"]')?.textContent.includes("paid")`
	}

	do("open node A and sign in",
		chromedp.Navigate(c.urlA+"/"),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), "alice"),
		chromedp.Click(chromedp.ID("login")),
	)
	waitFor("the socket is open", statusHas("open"))
	waitFor("the balance is loaded", balanceIs(startBalanceCents))

	// The merchant panel pays through node B; the page listens on node A.
	do("pay from the merchant panel",
		chromedp.SetValue(chromedp.ID("merchant-name"), "Coffee"),
		chromedp.SetValue(chromedp.ID("merchant-amount"), "12.50"),
		chromedp.Click(chromedp.ID("pay")),
	)
	waitFor("the payment arrives", `[...document.querySelectorAll("#payments li")].some((li) => li.textContent.includes("paid"))`)
	waitFor("the balance follows", balanceIs(startBalanceCents-1250))

	do("go offline", chromedp.Click(chromedp.ID("toggle-online")))
	waitFor("the page is offline", statusHas("offline"))

	if code, raw, _ := post(t, c.urlB, payJSON("alice", 500, "o-while-away")); code != http.StatusOK {
		t.Fatalf("payment while away: %d %s", code, raw)
	}
	early, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('[data-order="o-while-away"]') !== null`))
	if err != nil {
		t.Fatal(err)
	}
	if early {
		t.Fatal("the page showed a payment made while it was offline")
	}

	do("go online", chromedp.Click(chromedp.ID("toggle-online")))
	waitFor("the missed payment arrives", paidItem("o-while-away"))
	waitFor("the balance follows", balanceIs(startBalanceCents-1250-500))
	caughtUp, err := chromedp.Run(ctx, chromedp.Evaluate[bool](
		`document.querySelector('[data-order="o-while-away"] .caught-up') !== null`))
	if err != nil {
		t.Fatal(err)
	}
	if !caughtUp {
		t.Errorf("the resumed payment has no caught-up badge\npage: %s", pageText(browser))
	}

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := os.Getenv("WSNOTIFY_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(os.TempDir(), "wsnotify-example.png")
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)

	// A reload resumes from the id the page stored. One older than anything
	// in history gets the truncated notice, and the history there is.
	do("reload from an id history no longer holds",
		chromedp.Evaluate[chromedp.Void](`localStorage.setItem("wsnotify:lastId:alice", "1-0")`),
		chromedp.Reload(),
	)
	waitFor("the truncated notice", `!document.querySelector("#notice").hidden && document.querySelector("#notice").textContent.includes("1-0")`)
	waitFor("history is replayed", paidItem("o-while-away")+` && document.querySelectorAll("#payments li .caught-up").length === 2`)
	waitFor("the balance is reloaded", balanceIs(startBalanceCents-1250-500))
}

// findBrowser returns the path of a Chromium or Chrome. Without one the test
// is skipped, unless WSNOTIFY_REQUIRE_BROWSER=1 says that a run must not pass
// without it.
func findBrowser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	const missing = "no chromium, chromium-browser or google-chrome on PATH (Debian: apt-get install chromium)"
	if os.Getenv("WSNOTIFY_REQUIRE_BROWSER") == "1" {
		t.Fatal("WSNOTIFY_REQUIRE_BROWSER=1 but " + missing)
	}
	t.Skip(missing)
	return ""
}

// newBrowser starts a headless browser with a fresh profile, and stops it
// when t ends. The page's console and uncaught errors are logged if t fails.
func newBrowser(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox, // tests often run as root, where the sandbox cannot start
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// No host name resolves: the page may reach the nodes, by IP, and
		// nothing else.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc) // waits for the browser to exit, before its profile is removed
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)

	var (
		mu    sync.Mutex
		lines []string
	)
	// Listen starts the browser on ctx itself, so the browser is not tied
	// to the step timeouts the test derives from ctx.
	err := chromedp.Listen(ctx, func(ev any) {
		var line string
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			args := make([]string, 0, len(ev.Args))
			for _, a := range ev.Args {
				if len(a.Value) > 0 {
					args = append(args, string(a.Value))
				} else {
					args = append(args, a.Description)
				}
			}
			line = fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " "))
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			line = fmt.Sprintf("uncaught: %s %s (%s:%d)", d.Text, exceptionDescription(d), d.URL, d.LineNumber+1)
		default:
			return
		}
		mu.Lock()
		lines = append(lines, line)
		mu.Unlock()
	})
	if err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			t.Log("page " + l)
		}
	})
	return ctx
}

func exceptionDescription(d *runtime.ExceptionDetails) string {
	if d.Exception == nil {
		return ""
	}
	return d.Exception.Description
}

// pageText is what the page shows, for failure messages.
func pageText(browser context.Context) string {
	ctx, cancel := context.WithTimeout(browser, 5*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return text
}
