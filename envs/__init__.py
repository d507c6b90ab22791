"""Token-level Gymnasium environments for prompt editing, edit-task data and prompt templates.

Importing this package registers `promptgym/PromptEdit-v0` (`gymnasium.make`) with a vector entry point
(`gymnasium.make_vec(..., vectorization_mode="vector_entry_point")` gives a `PromptEditVectorEnv`), and the
multi-turn `promptgym/PromptChat-v0` (`PromptChatEnv`, vector: `PromptChatVectorEnv`).
"""

import gymnasium

from promptgym.envs.chat import (
    ChatTemplate,
    ChatTurn,
    Conversation,
    PromptChatEnv,
    PromptChatVectorEnv,
    load_conversations,
)
from promptgym.envs.checks import ShapingCheckError, ShapingCheckWarning, ShapingReport, check_shaping
from promptgym.envs.hf import tasks_to_dataset
from promptgym.envs.prompt_edit import EditEpisodes, PromptEditEnv, default_reward
from promptgym.envs.tasks import EditTask, load_tasks, split_by_source
from promptgym.envs.templates import EditTemplate
from promptgym.envs.tokenizer import default_tokenizer, train_tokenizer
from promptgym.envs.vector import PromptEditVectorEnv

ENV_ID = "promptgym/PromptEdit-v0"
CHAT_ENV_ID = "promptgym/PromptChat-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="promptgym.envs.prompt_edit:PromptEditEnv",
        vector_entry_point="promptgym.envs.vector:PromptEditVectorEnv",
    )
if CHAT_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=CHAT_ENV_ID,
        entry_point="promptgym.envs.chat:PromptChatEnv",
        vector_entry_point="promptgym.envs.chat:PromptChatVectorEnv",
    )

__all__ = [
    "CHAT_ENV_ID",
    "ChatTemplate",
    "ChatTurn",
    "Conversation",
    "ENV_ID",
    "EditEpisodes",
    "EditTask",
    "EditTemplate",
    "PromptChatEnv",
    "PromptChatVectorEnv",
    "PromptEditEnv",
    "PromptEditVectorEnv",
    "ShapingCheckError",
    "ShapingCheckWarning",
    "ShapingReport",
    "check_shaping",
    "default_reward",
    "default_tokenizer",
    "load_conversations",
    "load_tasks",
    "split_by_source",
    "tasks_to_dataset",
    "train_tokenizer",
]
