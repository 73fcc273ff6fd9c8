// Package middleware answers one question for wsnotify: "which user does
// this WebSocket belong to?"
//
// It is the identity room of the house, and nothing else. It does not log
// users in, check passwords or manage sessions; your application already
// does that. What it provides are ready-made user-key functions
// ([UserKeyFunc]) that the root wsnotify package calls before upgrading a
// connection. A function returns the user's key, or an error, in which case
// wsnotify answers 401 and never upgrades.
//
// The package deliberately does not import the root package, so it can be
// used, tested and reasoned about on its own. [UserKeyFunc] is a type alias,
// so its values plug straight into the root's option without conversion.
//
// Choosing a source:
//
//   - [FromContext] when your own auth middleware runs in front of the
//     WebSocket route and stores the user in the gin context. This is the
//     usual choice for same-origin apps with cookie sessions.
//   - [FromHeader] for non-browser clients (mobile apps, services) that can
//     set headers on the upgrade request, typically behind a gateway that has
//     already authenticated them.
//   - [Tickets] for browsers talking to a separately authenticated API. The
//     browser WebSocket API cannot set headers, so an authenticated HTTP
//     endpoint ([Tickets.IssueHandler]) hands out a short-lived signed
//     ticket and the page connects with ?ticket=... ([Tickets.FromQuery]).
//   - [FromQuery] only for demos and local experiments: anyone can claim to
//     be anyone.
//
// Every error returned by a [UserKeyFunc] from this package, and by
// [Tickets.Verify], wraps one of [ErrNoIdentity], [ErrTicketInvalid] or
// [ErrTicketExpired], so callers can branch with errors.Is. Configuration
// errors (from [NewTickets]) are plain errors: they are bugs to fix, not
// conditions to branch on.
package middleware
