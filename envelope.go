package wsnotify

import (
	"encoding/json"
	"fmt"
)

// DefaultType is the envelope type of a notification sent without WithType.
const DefaultType = "notification"

// Envelope is the JSON object every notification travels as, on the Redis
// channel and in the WebSocket text frame alike:
//
//	{"id":"...","type":"...","data":<payload JSON>}
//
// A client decodes it with any JSON library; Data stays raw so the caller's
// payload arrives exactly as it was encoded.
type Envelope struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// encodePayload turns a caller's payload into JSON once; the same bytes then
// go to Redis and to every session.
func encodePayload(payload any) ([]byte, error) {
	if raw, ok := payload.(json.RawMessage); ok {
		if !json.Valid(raw) {
			return nil, fmt.Errorf("%w: json.RawMessage is not valid JSON", ErrInvalidPayload)
		}
		return raw, nil
	}
	data, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	return data, nil
}

// appendEnvelope writes the envelope without an encoder: id and typ hold only
// characters that need no escaping (validateType, newMessageID), and data is
// already JSON.
func appendEnvelope(dst []byte, id, typ string, data []byte) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, id...)
	dst = append(dst, `","type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","data":`...)
	dst = append(dst, data...)
	return append(dst, '}')
}
