"""Move trained weights between PyTorch and gru_jax.

    python -m gru_jax.convert from-torch --cell gru --torch-model model.pt --output-dir runs/imported
    python -m gru_jax.convert to-torch --checkpoint runs/gru --output model.pt

`from-torch` reads a state dict saved with `torch.save(model.state_dict(), path)` (DLStudio's GRU
classifier layout, or a pmGRU classifier with `project1`, `project2` and `fc`) and writes a gru_jax
checkpoint that `gru_jax.evaluate` accepts. A state dict contains no vocabulary, so the embedding table is
built from the data and word vectors exactly as training builds it: pass the same archives and
`--embeddings` the PyTorch model was trained with. `to-torch` writes a state dict that loads into the
PyTorch modules with `strict=True`. Both directions need PyTorch installed.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from gru_jax.cli import add_common_flags, run_main

logger = logging.getLogger(__name__)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m gru_jax.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    from_torch = commands.add_parser("from-torch", help="PyTorch state dict (.pt) -> gru_jax checkpoint")
    from_torch.add_argument("--torch-model", required=True, help="state dict saved with torch.save")
    from_torch.add_argument("--cell", required=True, choices=("gru", "pmgru"), help="the model's cell")
    from_torch.add_argument("--output-dir", required=True, help="run directory to write the checkpoint to")
    from_torch.add_argument("--train-data", help="training archive the vocabulary is built from (default: shipped _200)")
    from_torch.add_argument("--test-data", help="test archive stored as the run's default for evaluation")
    from_torch.add_argument("--embeddings", help="word vectors the PyTorch model was trained with; default "
                            "in-corpus word2vec, as gru_jax.train")
    from_torch.add_argument("--cache-dir", help="word2vec cache directory (default ~/.cache/gru_jax)")
    from_torch.add_argument("--config", help="TOML file with the data and word2vec settings")
    from_torch.add_argument("--overwrite", action="store_true", help="replace a checkpoint in --output-dir")
    add_common_flags(from_torch)

    to_torch = commands.add_parser("to-torch", help="gru_jax checkpoint -> PyTorch state dict (.pt)")
    to_torch.add_argument("--checkpoint", required=True, help="a run's output directory or one step directory")
    to_torch.add_argument("--output", required=True, help="the .pt file to write")
    add_common_flags(to_torch)
    return parser


def _import_torch():
    try:
        import torch
    except ImportError:
        from gru_jax.errors import ConfigError

        raise ConfigError("converting needs PyTorch, which is not installed. Install it with pip install torch.") from None
    return torch


def load_torch_state_dict(path):
    """Read a state dict with `torch.load(weights_only=True)`, which cannot run code from the file."""
    from gru_jax.errors import CheckpointError

    torch = _import_torch()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Pass a state dict saved with torch.save(model.state_dict(), path).")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types (pickle, zip, runtime) for a bad file.
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch state dict ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Save the model with torch.save(model.state_dict(), path)."
        ) from None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(hasattr(value, "shape") for value in loaded.values()):
        raise CheckpointError(f"{path}: contains a {type(loaded).__name__}, expected a state dict of tensors.")
    return loaded


def convert_from_torch(args):
    from gru_jax.config import make_config
    from gru_jax.conversion import params_from_torch
    from gru_jax.errors import ConfigError
    from gru_jax.experiment import model_metadata
    from gru_jax.checkpoints import CheckpointStore
    from gru_jax.pipeline import prepare_data
    from gru_jax.reports import write_json
    from gru_jax.training import Progress, make_optimizer
    import dataclasses

    state_dict = load_torch_state_dict(args.torch_model)
    # Sizes come from the tensors; the config records them for evaluation.
    params = params_from_torch(state_dict, args.cell)
    rnn = params["params"]["rnn"]
    num_layers = len(rnn)
    first_cell = rnn["layer_0"]["cell"]
    hidden_size = int(params["params"]["head"]["kernel"].shape[0])
    input_size = int(first_cell["input_kernel"].shape[0])

    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if checkpoint_dir.exists() and not args.overwrite:
        raise ConfigError(f"{output_dir}: already contains checkpoints. Pass --overwrite to replace them, or another --output-dir.")
    overrides = {"cell": args.cell, "num_layers": num_layers, "hidden_size": hidden_size, "epochs": 1,
                 "train_data": args.train_data, "test_data": args.test_data, "embeddings": args.embeddings,
                 "cache_dir": args.cache_dir, "output_dir": str(output_dir)}
    config = make_config(args.config, overrides)
    data = prepare_data(config)
    # Check the tensors against the word vectors' dimension, with a message that names the tensor.
    params = params_from_torch(state_dict, args.cell, num_layers, input_size=data.input_size, hidden_size=hidden_size)
    logger.info("%s: %s classifier, %d layer(s), hidden size %d, input size %d", args.torch_model, args.cell,
                num_layers, hidden_size, input_size)

    if args.overwrite and checkpoint_dir.exists():
        import shutil

        shutil.rmtree(checkpoint_dir)
    optimizer = make_optimizer(config.resolved_learning_rate(), config.momentum, config.clip_norm)
    progress = Progress(epoch=config.epochs, finished=True)
    metadata = dict(model_metadata(config, data), progress=dataclasses.asdict(progress),
                    converted_from=str(Path(args.torch_model).absolute()))
    store = CheckpointStore(checkpoint_dir)
    store.save(0, {"params": params, "opt_state": optimizer.init(params)}, data.table, metadata)
    write_json(output_dir / "config.json", config.to_dict())
    print(f"wrote {checkpoint_dir / '0'}; score it with python -m gru_jax.evaluate --checkpoint {output_dir}")


def convert_to_torch(args):
    from gru_jax.conversion import params_to_torch
    from gru_jax.model_io import load_trained_model

    torch = _import_torch()
    trained = load_trained_model(args.checkpoint)
    state_dict = params_to_torch(trained.params, trained.metadata["model"]["cell"])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    torch.save(state_dict, partial)
    os.replace(partial, output)
    model = trained.metadata["model"]
    print(f"wrote {output}: {model['cell']} classifier, {model['num_layers']} layer(s), hidden size "
          f"{model['hidden_size']}, input size {model['input_size']}")


def convert_from_args(args):
    if args.command == "from-torch":
        convert_from_torch(args)
    else:
        convert_to_torch(args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(convert_from_args, args)


if __name__ == "__main__":
    sys.exit(main())
