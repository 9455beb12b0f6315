// kstatus reads Kubernetes objects as JSON (one object, or a List as `kubectl get -o json`
// prints it) on stdin and prints, per object, the status that kstatus computes for it:
// the same library Flux, kpt and cli-utils use to decide whether an applied object has
// reconciled. One line per object: KIND NAMESPACE/NAME STATUS MESSAGE.
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("failed to read stdin: %v", err)
	}
	// Numbers as the API machinery decodes them (integers as int64), which kstatus'
	// accessors of metadata.generation and status.observedGeneration require.
	var obj map[string]interface{}
	if err := json.Unmarshal(raw, &obj); err != nil {
		fail("failed to parse stdin as JSON: %v", err)
	}
	items := []interface{}{obj}
	if list, ok := obj["items"].([]interface{}); ok {
		items = list
	}
	for _, item := range items {
		m, ok := item.(map[string]interface{})
		if !ok {
			fail("item is not an object")
		}
		u := &unstructured.Unstructured{Object: m}
		res, err := status.Compute(u)
		if err != nil {
			fail("failed to compute status of %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
		fmt.Printf("%s %s/%s %s %s\n", u.GetKind(), u.GetNamespace(), u.GetName(), res.Status, res.Message)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
