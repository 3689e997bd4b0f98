"""`ofa-demo --checkpoint PATH`: a local web page (127.0.0.1 only) over `ofa.api`.

    ofa-demo --checkpoint outputs/<run>/<time>/checkpoints/best.ckpt --image-size 64   # http://127.0.0.1:7860

Upload an image, pick a task (or type an instruction with "generate"), submit: the page shows the answer,
the box drawn on the image (grounding) or the generated image (text to image, with `--vqgan`). One FastAPI
app, one HTML form posted back to itself (no JavaScript), model calls one at a time. Needs the `demo` extra
(`pip install -e '.[demo]'`: fastapi, uvicorn, python-multipart).
"""

import argparse
import base64
import html
import io
import sys
import threading
from collections.abc import Sequence
from typing import Any

from PIL import Image

TASK_LABELS = {"caption": "Caption", "vqa": "Answer a question", "grounding": "Find a phrase (box)",
               "classify": "Classify (labels: comma-separated)", "generate": "Follow an instruction",
               "text_to_image": "Text to image (no upload)"}
HOST = "127.0.0.1"  # local only: the page has no authentication


def answer(model: Any, task: str, image: Image.Image | None, text: str, vqgan: str | None = None
           ) -> tuple[str, Image.Image | None]:
    """(answer text, picture to show) of one request: a thin dispatch to the `OFA` calls."""
    from ofa.api.images import draw_boxes

    if task == "text_to_image":
        picture = model.text_to_image(text, vqgan=vqgan, samples=4)
        return f"generated from {text!r}", picture
    if image is None:
        raise ValueError("upload an image first")
    if task == "caption":
        return model.caption(image), image
    if task == "vqa":
        return model.vqa(image, text), image
    if task == "grounding":
        box = model.ground(image, text)
        return "box " + ", ".join(f"{c:.1f}" for c in box), draw_boxes(image, [box], [text])
    if task == "classify":
        labels = [s.strip() for s in text.split(",") if s.strip()] or None
        return model.classify(image, labels), image
    if task == "generate":
        return model.generate(image, text), image
    raise ValueError(f"unknown task {task!r}")


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render(title: str, task: str = "caption", text: str = "", result: str = "", picture: str = "",
           error: str = "") -> str:
    """The whole page: the form (kept filled in) and the last result."""
    options = "".join(f'<option value="{k}"{" selected" if k == task else ""}>{html.escape(v)}</option>'
                      for k, v in TASK_LABELS.items())
    shown = f'<img id="picture" src="{picture}" alt="result">' if picture else ""
    outcome = (f'<p id="error">{html.escape(error)}</p>' if error else
               f'<p>Answer: <b id="answer">{html.escape(result)}</b></p>{shown}' if result else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>OFA demo</title><style>
body{{font-family:sans-serif;max-width:46em;margin:2em auto;color:#222}} label{{display:block;margin:.6em 0 .2em}}
input[type=text]{{width:100%}} #picture{{width:288px;image-rendering:pixelated;border:1px solid #ccc;margin-top:.5em}}
#error{{color:#b00}} small{{color:#666}}</style></head><body>
<h2>OFA demo</h2><small>{html.escape(title)}</small>
<form method="post" action="/" enctype="multipart/form-data">
<label for="image">Image</label><input type="file" id="image" name="image" accept="image/*">
<label for="task">Task</label><select id="task" name="task">{options}</select>
<label for="text">Question / phrase / labels / instruction / prompt</label>
<input type="text" id="text" name="text" value="{html.escape(text)}">
<p><button type="submit" id="submit">Submit</button></p></form>{outcome}</body></html>"""


def build_app(model: Any, title: str, vqgan: str | None = None) -> Any:
    """The FastAPI app: GET / the form, POST / the form with the answer."""
    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi.responses import HTMLResponse

    app, lock = FastAPI(title="OFA demo"), threading.Lock()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render(title)

    @app.post("/", response_class=HTMLResponse)
    def submit(task: str = Form("caption"), text: str = Form(""), image: UploadFile | None = File(None)) -> str:
        try:
            data = image.file.read() if image is not None else b""
            picture = Image.open(io.BytesIO(data)).convert("RGB") if data else None
            with lock:
                result, shown = answer(model, task, picture, text, vqgan)
        except Exception as err:  # shown on the page: a bad upload or request must not end the server
            return render(title, task, text, error=f"{type(err).__name__}: {err}")
        return render(title, task, text, result=str(result), picture=data_url(shown) if shown else "")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="platform folder, run .ckpt, fairseq .pt, HF-port folder")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--image-size", type=int, help="square input size of the image tasks (default: the checkpoint's)")
    parser.add_argument("--tokenizer", help="vocabulary of a checkpoint without one")
    parser.add_argument("--vqgan", help="text to image: the VQGAN folder")
    parser.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    try:
        import uvicorn

        import ofa
        from ofa.safe_load import CheckpointError

        model = ofa.from_pretrained(args.checkpoint, tokenizer=args.tokenizer, device=args.device,
                                    image_size=args.image_size)
    except ImportError as err:
        print(f"ofa-demo: {err.name} is missing; pip install -e '.[demo]'", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"ofa-demo: error: {err}", file=sys.stderr)
        return 2
    print(f"ofa-demo: http://{HOST}:{args.port}", file=sys.stderr)
    uvicorn.run(build_app(model, str(args.checkpoint), args.vqgan), host=HOST, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
