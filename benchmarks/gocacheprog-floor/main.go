// A GOCACHEPROG with no cache behind it, for bench_gocache.py --floor: it answers each get with the reply
// gobuildcache gave the same ActionID in a recorded session of the same build (the table in the file named by
// $FLOOR_TABLE: one "<ActionID base64> <reply line without its ID>" a line), at once. What `go` costs in
// GOCACHEPROG mode with a program that costs nearly nothing: the floor under any cache program.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
)

type request struct {
	ID       int64
	Command  string
	ActionID []byte
	BodySize int64
}

func main() {
	table := map[string][]byte{}
	data, err := os.ReadFile(os.Getenv("FLOOR_TABLE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(3)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if key, rest, ok := bytes.Cut(line, []byte(" ")); ok {
			table[string(key)] = rest
		}
	}
	out := bufio.NewWriter(os.Stdout)
	out.WriteString(`{"ID":0,"KnownCommands":["get","close"]}` + "\n")
	out.Flush()
	in := json.NewDecoder(bufio.NewReader(os.Stdin))
	for {
		var r request
		if err := in.Decode(&r); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(2)
		}
		id := strconv.FormatInt(r.ID, 10)
		switch r.Command {
		case "get":
			key, _ := json.Marshal(r.ActionID)
			if rest, ok := table[string(bytes.Trim(key, `"`))]; ok {
				out.WriteString(`{"ID":` + id)
				out.Write(rest)
				out.WriteString("\n")
			} else {
				out.WriteString(`{"ID":` + id + `,"Miss":true}` + "\n")
			}
		case "close":
			out.WriteString(`{"ID":` + id + "}\n")
			out.Flush()
			return
		default:
			out.WriteString(`{"ID":` + id + `,"Err":"floor: only get and close"}` + "\n")
		}
		out.Flush()
	}
}
