// Submit one task per argument to a pool and print each task's result as a JSON line.
//
//	WORKPOOL_REDIS_URL=redis://127.0.0.1:6379/0 WORKPOOL_STREAM=thumbnails \
//	    go run . '{"image": "a.png"}' '{"image": "b.png"}'
//
// The pool must have results on (spec.delivery.results.ttlSeconds).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	workpool "github.com/workpool-dev/workpool/clients/go"
)

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	ctx := context.Background()
	pool, err := workpool.FromURL(getenv("WORKPOOL_REDIS_URL", "redis://127.0.0.1:6379/0"),
		workpool.Options{Stream: getenv("WORKPOOL_STREAM", "thumbnails")})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	payloads := os.Args[1:]
	if len(payloads) == 0 {
		payloads = []string{`{"image": "a.png"}`}
	}
	var tasks []workpool.Submitted
	for _, payload := range payloads {
		task, err := pool.Submit(ctx, []byte(payload), workpool.TaskOptions{})
		if err != nil {
			log.Fatal(err)
		}
		tasks = append(tasks, task)
	}
	for _, task := range tasks {
		result, err := pool.WaitFor(ctx, task.Ref(), 2*time.Minute) // blocks until a worker records the outcome
		if err != nil {
			log.Fatal(err)
		}
		var output *string // null when the handler printed nothing
		if result.Output != nil {
			text := string(result.Output)
			output = &text
		}
		line, _ := json.Marshal(map[string]any{"task_id": task.TaskID, "state": result.State,
			"output": output, "error": result.Error})
		fmt.Println(string(line))
	}
}
