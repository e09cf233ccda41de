"""`bitsmith verify EXPORT [--data SRC] [--seqlen 512] [--windows 16] [--all] [--json]`: load an
export with every reader installed and print each one's perplexity beside Bitsmith's."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="load an export with every installed reader; "
                                                  "compare each one's perplexity with Bitsmith's")
    parser.add_argument("export", help="an export folder (the --out of `bitsmith export`)")
    parser.add_argument("--checkpoint", help="the Bitsmith checkpoint it was written from "
                                             "(default: the one its bitsmith-export.json names)")
    parser.add_argument("--data", default="builtin-eval",
                        help="builtin-eval | file:PATH | hf:NAME... (default builtin-eval)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16, help="first N windows (llama.cpp: chunks)")
    parser.add_argument("--all", action="store_true",
                        help="also run the calls the README says refuse or misread the file")
    parser.add_argument("--only", help="run only the readers whose name contains this (e.g. llama.cpp)")
    parser.add_argument("--llama-perplexity", help="path of llama.cpp's llama-perplexity (default: found on PATH)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.verify import summary, verify_export

    report = verify_export(args.export, data=args.data, seqlen=args.seqlen, windows=args.windows,
                           checkpoint=args.checkpoint, run_all=args.all, llama_exe=args.llama_perplexity,
                           only=args.only)
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 0 if report["pass"] else 1
