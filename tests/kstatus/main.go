// Command kstatus prints what sigs.k8s.io/cli-utils/pkg/kstatus/status (the library Flux and
// kubectl-style waiters use) computes for Kubernetes objects.
//
// Input on stdin: a JSON array of objects as the API server returns them. Output on stdout: a
// JSON array with one {"name", "status", "message"} per object, in the same order, where status
// is InProgress, Failed, Current, Terminating, NotFound or Unknown.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: reading stdin: %v\n", err)
		os.Exit(2)
	}
	// The apimachinery decoder turns whole numbers into int64, as a client reading from the API
	// server sees them (kstatus reads generations as int64).
	var objects []interface{}
	if err := utiljson.Unmarshal(input, &objects); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: stdin is not a JSON array of objects: %v\n", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(objects))
	for _, item := range objects {
		object, ok := item.(map[string]interface{})
		if !ok {
			fmt.Fprintf(os.Stderr, "kstatus: not an object: %v\n", item)
			os.Exit(2)
		}
		u := &unstructured.Unstructured{Object: object}
		computed, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		results = append(results, result{Name: u.GetName(), Status: computed.Status.String(), Message: computed.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
}
