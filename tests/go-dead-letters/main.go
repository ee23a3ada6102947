// The Go client's view of a pool's dead letters, for tests/tests/clients_e2e.rs: prints
// them as one JSON array (oldest first).
//
//	go run . REDIS_URL STREAM
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"

	workpool "github.com/workpool-dev/workpool/clients/go"
)

type deadLetter struct {
	Ref        string  `json:"ref"`
	TaskID     *string `json:"task_id"`
	OriginalID *string `json:"original_id"`
	Error      *string `json:"error"`
	Deliveries *int64  `json:"deliveries"`
	Consumer   *string `json:"consumer"`
	Payload    string  `json:"payload"`
}

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: go-dead-letters REDIS_URL STREAM")
	}
	ctx := context.Background()
	pool, err := workpool.FromURL(os.Args[1], workpool.Options{Stream: os.Args[2]})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	list := []deadLetter{}
	for d, err := range pool.DeadLetters(ctx, workpool.DeadLetterFilter{}, false) {
		if err != nil {
			log.Fatal(err)
		}
		list = append(list, deadLetter{Ref: d.Ref.String(), TaskID: d.TaskID, OriginalID: d.OriginalID,
			Error: d.Error, Deliveries: d.Deliveries, Consumer: d.Consumer, Payload: string(d.Payload)})
	}
	out, err := json.Marshal(list)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(out))
}
