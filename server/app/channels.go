package app

import (
	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/messenger"
	"github.com/parleydesk/parley/channels/telegram"
	"github.com/parleydesk/parley/channels/whatsapp"
)

// adapters builds the provider adapters from the configuration (base URLs
// are configurable so that tests point them at local fakes).
func adapters(cfg Config) []channels.Adapter {
	c := channels.Config{TelegramBaseURL: cfg.TelegramAPIURL, GraphBaseURL: cfg.GraphAPIURL,
		GraphVersion: cfg.GraphAPIVersion}.WithDefaults()
	return []channels.Adapter{telegram.New(c), whatsapp.New(c), messenger.New(c)}
}
